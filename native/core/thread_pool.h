// A fixed pool of worker threads sized to the physical cores. parallel_for splits [0, n) into
// contiguous chunks, runs them on the pool and the calling thread, and returns when all are done.
#pragma once
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

  int num_threads_;
  std::vector<std::thread> workers_;
  std::mutex mutex_;
  std::condition_variable wake_;
  std::condition_variable done_;
  const std::function<void(int64_t)>* job_ = nullptr;
  int64_t job_tasks_ = 0;
  int64_t next_task_ = 0;
  int64_t finished_tasks_ = 0;
  uint64_t generation_ = 0;
  bool stopping_ = false;
  std::mutex run_mutex_;  // one parallel region at a time
};

}  // namespace plm
