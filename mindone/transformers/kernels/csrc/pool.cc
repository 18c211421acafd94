// The thread pool behind mk::parallel_for: persistent workers that wait for the next job by spinning, then by
// yielding, then by sleeping on a futex. Kernels of a decode step follow each other within tens of microseconds
// (compiled) to a few hundred (PyNative), and waking a sleeping thread costs about as much as a small kernel, so
// workers keep polling for a while; polling with sched_yield leaves the core to any other runnable thread (such
// as MindSpore's own kernel threads during a large MatMul). An idle pool sleeps and costs no CPU. A forked child
// (msrun workers, test subprocesses) starts a pool of its own.
#include <linux/futex.h>
#include <pthread.h>
#include <sched.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include <atomic>
#include <cstdlib>
#include <mutex>
#include <thread>
#include <vector>

#include "common.h"

namespace mk {
namespace {

constexpr uint64_t kSpinNanoseconds = 20000;    // busy polling
constexpr uint64_t kYieldNanoseconds = 5000000;  // then polling with sched_yield, then sleeping

inline void cpu_relax() {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_ia32_pause();
#elif defined(__aarch64__)
  asm volatile("yield");
#endif
}

inline uint64_t now_ns() {
  timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return static_cast<uint64_t>(t.tv_sec) * 1000000000ull + t.tv_nsec;
}

long futex(std::atomic<int> *word, int op, int value) {
  return syscall(SYS_futex, reinterpret_cast<int *>(word), op, value, nullptr, nullptr, 0);
}

int configured_threads() {
  if (const char *env = std::getenv("MINDONE_KERNEL_THREADS")) {
    int n = std::atoi(env);
    if (n > 0) return n;
  }
  cpu_set_t set;
  if (sched_getaffinity(0, sizeof set, &set) == 0) return CPU_COUNT(&set) > 0 ? CPU_COUNT(&set) : 1;
  return 1;
}

class Pool {
 public:
  explicit Pool(int threads) : threads_(threads < 64 ? threads : 64) {
    for (int t = 1; t < threads_; t++) std::thread(&Pool::work, this, t).detach();
  }
  int threads() const { return threads_; }

  // false when another kernel holds the pool: the caller then runs everything itself.
  //
  // Each worker claims its range before running it. When the caller is done with its own range it takes back the
  // ranges no worker has claimed yet and runs them itself, then waits only for the claimed ones: on a loaded
  // machine a worker that has not been scheduled yet does not hold up the kernel (measured: a 3 ms attention call
  // took 10-25 ms while other processes kept the second core busy).
  bool run(int64_t n, RangeFn fn, void *ctx) {
    std::unique_lock<std::mutex> lock(busy_, std::try_to_lock);
    if (!lock.owns_lock()) return false;
    n_ = n, fn_ = fn, ctx_ = ctx;
    finished_.store(0, std::memory_order_relaxed);
    const uint64_t all = ((threads_ >= 64 ? 0 : (uint64_t{1} << threads_)) - 1) & ~uint64_t{1};
    unclaimed_.store(all, std::memory_order_release);
    generation_.fetch_add(1, std::memory_order_release);
    if (sleepers_.load(std::memory_order_acquire) > 0) futex(&generation_, FUTEX_WAKE_PRIVATE, threads_);
    range(0);
    const uint64_t left = unclaimed_.exchange(0, std::memory_order_acq_rel);
    for (int t = 1; t < threads_; t++)
      if (left & (uint64_t{1} << t)) range(t);
    const int claimed = __builtin_popcountll(all & ~left);
    while (finished_.load(std::memory_order_acquire) < claimed) cpu_relax();
    return true;
  }

 private:
  void range(int t) {
    int64_t begin = n_ * t / threads_, end = n_ * (t + 1) / threads_;
    if (begin < end) fn_(ctx_, begin, end);
  }

  void work(int t) {
    int seen = 0;  // the generation at construction: a job posted before this thread first runs is still taken
    for (;;) {
      uint64_t start = now_ns();
      for (int spins = 0; generation_.load(std::memory_order_acquire) == seen; spins++) {
        uint64_t waited = (spins & 63) == 63 ? now_ns() - start : 0;
        if (waited > kYieldNanoseconds) {
          sleepers_.fetch_add(1, std::memory_order_acq_rel);
          futex(&generation_, FUTEX_WAIT_PRIVATE, seen);
          sleepers_.fetch_sub(1, std::memory_order_acq_rel);
          start = now_ns();
        } else if (waited > kSpinNanoseconds) {
          sched_yield();
        } else {
          cpu_relax();
        }
      }
      seen = generation_.load(std::memory_order_acquire);
      // The claim synchronises with the job that set the bit (its n_, fn_, ctx_), whichever generation woke us.
      const uint64_t bit = uint64_t{1} << t;
      if (unclaimed_.fetch_and(~bit, std::memory_order_acq_rel) & bit) {
        range(t);
        finished_.fetch_add(1, std::memory_order_acq_rel);
      }
    }
  }

  const int threads_;
  std::mutex busy_;
  std::atomic<int> generation_{0}, finished_{0}, sleepers_{0};
  std::atomic<uint64_t> unclaimed_{0};  // bit t: range t of the current job not yet taken by worker t
  int64_t n_ = 0;
  RangeFn fn_ = nullptr;
  void *ctx_ = nullptr;
};

std::atomic<Pool *> instance{nullptr};
std::mutex creation;

void forget_pool_in_child() { instance.store(nullptr); }  // after fork() the parent's workers do not exist here

Pool *pool() {
  Pool *p = instance.load(std::memory_order_acquire);
  if (p != nullptr) return p;
  std::lock_guard<std::mutex> lock(creation);
  if (instance.load() == nullptr) {
    static bool registered = (pthread_atfork(nullptr, nullptr, forget_pool_in_child), true);
    (void)registered;
    instance.store(new Pool(configured_threads()));  // never freed: detached workers may still reference it
  }
  return instance.load();
}

}  // namespace

int num_threads() { return pool()->threads(); }

void parallel_for(int64_t n, int64_t grain, RangeFn fn, void *ctx) {
  if (n <= 0) return;
  Pool *p = pool();
  if (p->threads() == 1 || n < 2 * grain || !p->run(n, fn, ctx)) fn(ctx, 0, n);
}

}  // namespace mk
