#include "core/thread_pool.h"

#include <cstdint>
#include <algorithm>
#include <atomic>
#include <chrono>
#include <fstream>
#include <set>
#include <string>
#include <utility>

namespace plm {

int ThreadPool::physical_cores() {
  // Count distinct (physical id, core id) pairs; fall back to hardware_concurrency.
  std::ifstream cpuinfo("/proc/cpuinfo");
  std::set<std::pair<int, int>> cores;
  int physical = 0;
  std::string line;
  while (std::getline(cpuinfo, line)) {
    auto colon = line.find(':');
    if (colon == std::string::npos) continue;
    std::string key = line.substr(0, line.find_last_not_of(" \t", colon - 1) + 1);
    if (key == "physical id") physical = std::atoi(line.c_str() + colon + 1);
    if (key == "core id") cores.insert({physical, std::atoi(line.c_str() + colon + 1)});
  }
  int hw = static_cast<int>(std::thread::hardware_concurrency());
  if (cores.empty()) return std::max(1, hw);
  return std::max(1, std::min<int>(static_cast<int>(cores.size()), hw > 0 ? hw : 1 << 20));
}

ThreadPool::ThreadPool(int threads) {
  num_threads_ = threads > 0 ? threads : physical_cores();
  for (int i = 1; i < num_threads_; ++i) workers_.emplace_back([this, i] { worker_loop(i); });
}

ThreadPool::~ThreadPool() {
  {
    std::lock_guard<std::mutex> lock(mutex_);
    stopping_.store(true);
    generation_.fetch_add(1);
  }
  wake_.notify_all();
  for (auto& t : workers_) t.join();
}

namespace {
inline void cpu_relax() {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_ia32_pause();
#elif defined(__aarch64__)
  asm volatile("yield");
#endif
}
}  // namespace

void ThreadPool::worker_loop(int) {
  uint64_t seen = 0;
  for (;;) {
    // Spin for a while on the generation counter, then sleep.
    bool fresh = false;
    auto spin_start = std::chrono::steady_clock::now();
    for (int i = 0;; ++i) {
      if (generation_.load(std::memory_order_acquire) != seen) {
        fresh = true;
        break;
      }
      cpu_relax();
      if ((i & 255) == 255 &&
          std::chrono::steady_clock::now() - spin_start > std::chrono::microseconds(kSpinMicros))
        break;
    }
    if (!fresh) {
      std::unique_lock<std::mutex> lock(mutex_);
      sleepers_.fetch_add(1);
      wake_.wait(lock, [&] { return generation_.load() != seen; });
      sleepers_.fetch_sub(1);
    }
    if (stopping_.load()) return;
    seen = generation_.load(std::memory_order_acquire);
    active_.fetch_add(1);
    Job* job = job_.load();
    if (job) {
      for (;;) {
        const int64_t t = job->next.fetch_add(1, std::memory_order_relaxed);
        if (t >= job->tasks) break;
        (*job->fn)(t);
        job->finished.fetch_add(1, std::memory_order_release);
      }
    }
    active_.fetch_sub(1, std::memory_order_release);
  }
}

void ThreadPool::run_tasks(int64_t tasks, const std::function<void(int64_t)>& fn) {
  if (tasks <= 0) return;
  if (tasks == 1 || num_threads_ == 1) {
    for (int64_t t = 0; t < tasks; ++t) fn(t);
    return;
  }
  std::lock_guard<std::mutex> run_lock(run_mutex_);
  Job job;
  job.fn = &fn;
  job.tasks = tasks;
  job_.store(&job);
  generation_.fetch_add(1);
  if (sleepers_.load() > 0) {
    std::lock_guard<std::mutex> lock(mutex_);
    wake_.notify_all();
  }
  for (;;) {
    const int64_t t = job.next.fetch_add(1, std::memory_order_relaxed);
    if (t >= tasks) break;
    fn(t);
    job.finished.fetch_add(1, std::memory_order_release);
  }
  // Wait for tasks still running on workers, then for every worker to drop its pointer to `job`.
  for (int i = 0; job.finished.load(std::memory_order_acquire) < tasks; ++i) {
    cpu_relax();
    if (i > 4096) std::this_thread::yield();
  }
  job_.store(nullptr);
  for (int i = 0; active_.load() > 0; ++i) {
    cpu_relax();
    if (i > 4096) std::this_thread::yield();
  }
}

void ThreadPool::parallel_for(int64_t n, int64_t grain, const std::function<void(int64_t, int64_t)>& fn) {
  if (n <= 0) return;
  grain = std::max<int64_t>(1, grain);
  int64_t chunks = std::min<int64_t>(num_threads_, (n + grain - 1) / grain);
  if (chunks <= 1) {
    fn(0, n);
    return;
  }
  int64_t per = (n + chunks - 1) / chunks;
  run_tasks(chunks, [&](int64_t c) {
    int64_t b = c * per, e = std::min(n, b + per);
    if (b < e) fn(b, e);
  });
}

void run_tasks(ThreadPool* pool, int64_t tasks, const std::function<void(int64_t)>& fn) {
  if (pool && tasks > 1) pool->run_tasks(tasks, fn);
  else for (int64_t t = 0; t < tasks; ++t) fn(t);
}

void parallel_for(ThreadPool* pool, int64_t n, int64_t grain, const std::function<void(int64_t, int64_t)>& fn) {
  if (pool) pool->parallel_for(n, grain, fn);
  else fn(0, n);
}

}  // namespace plm
