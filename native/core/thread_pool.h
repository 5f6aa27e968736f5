// A fixed pool of worker threads sized to the physical cores. parallel_for splits [0, n) into
// contiguous chunks, runs them on the pool and the calling thread, and returns when all are done.
//
// Dispatch is lock-free on the hot path: a job is published through an atomic pointer and generation
// counter, tasks are claimed with fetch_add, and idle workers spin (with a pause hint) for a short while
// before sleeping on a condition variable. A decode step issues ~100+ parallel regions per token, each a
// few hundred microseconds apart, so workers stay spinning across them and a region costs about a
// microsecond instead of a mutex/condvar round trip; after kSpinMicros without work they sleep again.
#pragma once
#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <mutex>
#include <thread>
#include <vector>

namespace plm {

class ThreadPool {
 public:
  // threads <= 0: one per physical core (hardware_concurrency / SMT width, at least 1).
  explicit ThreadPool(int threads = 0);
  ~ThreadPool();
  ThreadPool(const ThreadPool&) = delete;
  ThreadPool& operator=(const ThreadPool&) = delete;

  int size() const { return num_threads_; }

  // fn(begin, end) over [0, n) in at most size() chunks of at least `grain` items.
  void parallel_for(int64_t n, int64_t grain, const std::function<void(int64_t, int64_t)>& fn);

  // fn(task) for task in [0, tasks); tasks are handed out dynamically.
  void run_tasks(int64_t tasks, const std::function<void(int64_t)>& fn);

  static int physical_cores();

 private:
  void worker_loop(int index);

  struct Job {
    const std::function<void(int64_t)>* fn = nullptr;
    int64_t tasks = 0;
    std::atomic<int64_t> next{0};
    std::atomic<int64_t> finished{0};
  };
  static constexpr int kSpinMicros = 2000;  // how long an idle worker spins before sleeping

  int num_threads_;
  std::vector<std::thread> workers_;
  std::mutex mutex_;              // guards sleeping only
  std::condition_variable wake_;
  std::atomic<Job*> job_{nullptr};     // the running job (lives on the caller's stack), null between jobs
  std::atomic<uint64_t> generation_{0};
  std::atomic<int> active_{0};         // workers holding a pointer to the current job
  std::atomic<int> sleepers_{0};       // workers asleep (or about to be) on wake_
  std::atomic<bool> stopping_{false};
  std::mutex run_mutex_;  // one parallel region at a time
};

// The kernels' entry points: pool may be null (single-threaded callers). Without a pool, or with a single
// task, the work runs inline on the calling thread.
void run_tasks(ThreadPool* pool, int64_t tasks, const std::function<void(int64_t)>& fn);
void parallel_for(ThreadPool* pool, int64_t n, int64_t grain, const std::function<void(int64_t, int64_t)>& fn);

}  // namespace plm
