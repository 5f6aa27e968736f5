#include "core/thread_pool.h"

#include <algorithm>
#include <atomic>
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
    stopping_ = true;
  }
  wake_.notify_all();
  for (auto& t : workers_) t.join();
}

void ThreadPool::worker_loop(int) {
  uint64_t seen = 0;
  for (;;) {
    const std::function<void(int64_t)>* job;
    {
      std::unique_lock<std::mutex> lock(mutex_);
      wake_.wait(lock, [&] { return stopping_ || generation_ != seen; });
      if (stopping_) return;
      seen = generation_;
      job = job_;
    }
    for (;;) {
      int64_t task;
      {
        std::lock_guard<std::mutex> lock(mutex_);
        if (job_ != job || next_task_ >= job_tasks_) break;
        task = next_task_++;
      }
      (*job)(task);
      std::lock_guard<std::mutex> lock(mutex_);
      if (++finished_tasks_ == job_tasks_) done_.notify_all();
    }
  }
}

void ThreadPool::run_tasks(int64_t tasks, const std::function<void(int64_t)>& fn) {
  if (tasks <= 0) return;
  if (tasks == 1 || num_threads_ == 1) {
    for (int64_t t = 0; t < tasks; ++t) fn(t);
    return;
  }
  std::lock_guard<std::mutex> run_lock(run_mutex_);
  {
    std::lock_guard<std::mutex> lock(mutex_);
    job_ = &fn;
    job_tasks_ = tasks;
    next_task_ = 0;
    finished_tasks_ = 0;
    ++generation_;
  }
  wake_.notify_all();
  for (;;) {
    int64_t task;
    {
      std::lock_guard<std::mutex> lock(mutex_);
      if (next_task_ >= job_tasks_) break;
      task = next_task_++;
    }
    fn(task);
    std::lock_guard<std::mutex> lock(mutex_);
    if (++finished_tasks_ == job_tasks_) done_.notify_all();
  }
  std::unique_lock<std::mutex> lock(mutex_);
  done_.wait(lock, [&] { return finished_tasks_ == job_tasks_; });
  job_ = nullptr;
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

}  // namespace plm
