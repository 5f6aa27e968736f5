// Shared N-API plumbing for every binding: coded errors and a promise-returning worker that runs
// native work off the JS thread and turns plm::Error into a rejection with a `.code`.
#pragma once
#include <napi.h>

#include <cstring>
#include <exception>
#include <functional>
#include <string>
#include <utility>

#include "core/error.h"

namespace plm_napi {

inline Napi::Error coded_error(Napi::Env env, const std::string& code, const std::string& message) {
  Napi::Error err = Napi::Error::New(env, message);
  err.Set("code", Napi::String::New(env, code));
  return err;
}

[[noreturn]] inline void throw_invalid(Napi::Env env, const std::string& message) {
  throw coded_error(env, "ERR_INVALID_ARGUMENT", message);
}

// Captures a native failure on the worker thread for rejection on the JS thread.
struct Failure {
  std::string code, message;
  bool failed = false;
  void capture(const std::exception_ptr& ep) {
    failed = true;
    try {
      std::rethrow_exception(ep);
    } catch (const plm::Error& e) {
      code = plm::error_code_name(e.code());
      message = e.what();
    } catch (const std::bad_alloc&) {
      code = "ERR_OUT_OF_MEMORY";
      message = "out of memory";
    } catch (const std::exception& e) {
      code = "ERR_INTERNAL";
      message = e.what();
    } catch (...) {
      code = "ERR_INTERNAL";
      message = "unknown native error";
    }
  }
};


// A JS-owned Float32Array holding a copy of data[0..n) (no external buffers: Electron forbids them).
inline Napi::Float32Array float_array(Napi::Env env, const float* data, size_t n) {
  Napi::Float32Array a = Napi::Float32Array::New(env, n);
  if (n) std::memcpy(a.Data(), data, n * sizeof(float));
  return a;
}

// Forwards (fraction, stage) progress from a worker thread to a JS callback (fn(fraction, stage)); calls
// that cannot be queued are dropped. Create on the JS thread, call fn() on the worker, Release() when done.
class ProgressRelay {
 public:
  ProgressRelay() = default;
  ProgressRelay(Napi::Env env, Napi::Function callback, const char* name) {
    if (!callback.IsEmpty()) tsfn_ = Napi::ThreadSafeFunction::New(env, callback, name, 0, 1);
  }
  // An empty std::function when there is no callback.
  std::function<void(double, const std::string&)> fn() {
    if (!tsfn_) return {};
    return [this](double fraction, const std::string& stage) {
      auto* payload = new std::pair<double, std::string>(fraction, stage);
      if (tsfn_.NonBlockingCall(payload, [](Napi::Env env, Napi::Function f, std::pair<double, std::string>* p) {
            f.Call({Napi::Number::New(env, p->first), Napi::String::New(env, p->second)});
            delete p;
          }) != napi_ok)
        delete payload;
    };
  }
  void Release() {
    if (tsfn_) tsfn_.Release();
  }
  // The queue progress travels on; null when there is no callback.
  Napi::ThreadSafeFunction* queue() { return tsfn_ ? &tsfn_ : nullptr; }

 private:
  Napi::ThreadSafeFunction tsfn_;
};

// Base worker: runs Work() off the JS thread, resolves with Result() or rejects with a coded Error.
class JobWorker : public Napi::AsyncWorker {
 public:
  explicit JobWorker(Napi::Env env) : Napi::AsyncWorker(env), deferred_(Napi::Promise::Deferred::New(env)) {}
  Napi::Promise Promise() { return deferred_.Promise(); }

 protected:
  virtual void Work() = 0;
  virtual Napi::Value Result(Napi::Env env) = 0;

  void Execute() override {
    try {
      Work();
    } catch (...) {
      failure_.capture(std::current_exception());
    }
  }
  // Callbacks a job sends to JS (progress, tokens) travel on a thread-safe function's queue and may
  // still be pending when Work() returns. A worker with such a queue settles its promise with one last
  // call on that queue, so every callback reaches JS before the promise settles.
  void OnOK() override {
    Napi::ThreadSafeFunction* queue = CallbackQueue();
    if (!queue) {
      Settle();
      return;
    }
    SuppressDestruct();
    if (queue->NonBlockingCall(this, [](Napi::Env, Napi::Function, JobWorker* w) {
          w->Settle();
          w->Destroy();
        }) != napi_ok) {
      Settle();
      Destroy();
    }
  }
  // The thread-safe function whose queued calls must reach JS before the promise settles, if any.
  virtual Napi::ThreadSafeFunction* CallbackQueue() { return nullptr; }
  // Releases the worker's thread-safe functions (Cleanup) and resolves or rejects the promise.
  void Settle() {
    Napi::Env env = Env();
    Napi::HandleScope scope(env);
    Cleanup();
    if (failure_.failed) {
      deferred_.Reject(coded_error(env, failure_.code, failure_.message).Value());
      return;
    }
    try {
      deferred_.Resolve(Result(env));
    } catch (const Napi::Error& e) {
      deferred_.Reject(e.Value());
    }
  }
  void OnError(const Napi::Error& e) override {
    Cleanup();
    deferred_.Reject(e.Value());
  }
  virtual void Cleanup() {}

  Napi::Promise::Deferred deferred_;
  Failure failure_;
};

}  // namespace plm_napi
