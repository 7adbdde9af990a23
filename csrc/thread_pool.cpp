// The kernels' thread pool (common/thread_pool.h). One per process, shared by every ISA
// variant of the kernels; its threads are created on first use and live until the process ends.
#include "common/thread_pool.h"

#include <pthread.h>
#include <sched.h>
#include <xmmintrin.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <deque>
#include <exception>
#include <mutex>
#include <thread>
#include <vector>

namespace pyconv {
namespace {

// One thread's share of a job's tasks, [begin + front, begin + back): its owner claims from
// the front, a thread that has run out of work steals from the back. Both ends live in one
// word so that a claim is one compare-and-swap, and the last task goes to exactly one thread.
// A line of its own: the owner claims without touching other threads' caches.
struct alignas(64) Share {
    int64_t begin = 0;
    std::atomic<uint64_t> ends{0};  // front in the low 32 bits, back in the high 32

    static uint64_t pack(uint32_t front, uint32_t back) { return uint64_t(back) << 32 | front; }

    void reset(int64_t first, int64_t count) {
        begin = first;
        ends.store(pack(0, uint32_t(count)), std::memory_order_relaxed);
    }

    // The next task from the front (the owner) or the back (a thief); false once empty.
    bool claim(bool from_back, int64_t& task) {
        uint64_t seen = ends.load(std::memory_order_relaxed);
        for (;;) {
            const uint32_t front = uint32_t(seen), back = uint32_t(seen >> 32);
            if (front >= back) return false;
            const uint64_t want = from_back ? pack(front, back - 1) : pack(front + 1, back);
            if (ends.compare_exchange_weak(seen, want, std::memory_order_relaxed)) {
                task = begin + (from_back ? back - 1 : front);
                return true;
            }
        }
    }
};

// The most tasks one job holds, so that every share's ends fit in 32 bits; run() splits
// longer lists into consecutive jobs.
constexpr int64_t kMaxJobTasks = int64_t(1) << 31;

struct Job {
    PoolTask task;
    void* context;
    int64_t n;
    int threads;
    unsigned mxcsr;
    Share* shares;                 // one per thread
    std::atomic<int64_t> done{0};  // tasks finished (each thread adds its count once)
    std::atomic<bool> failed{false};
    std::exception_ptr error;      // the first task's exception, written once (failed)
};

// How long an idle worker keeps polling for the next job before it sleeps: kernels in a
// training step or a graph follow each other a few to a few hundred microseconds apart, and
// waking a sleeping thread costs tens of microseconds. Every kYieldEvery polls it yields the
// core, so that a thread with work to do on the same core (the caller itself, when the system
// put both there) runs instead.
constexpr std::chrono::microseconds kIdleSpin{1000};
constexpr int kYieldEvery = 16;

constexpr unsigned kDefaultMxcsr = 0x1F80;

thread_local bool t_in_task = false;

inline void pause_or_yield(int poll) {
    if (poll % kYieldEvery == kYieldEvery - 1) sched_yield();
    else _mm_pause();
}

class Pool {
public:
    void run(int64_t n, int threads, PoolTask task, void* context) {
        std::unique_lock<std::mutex> busy(run_mutex_, std::try_to_lock);
        if (!busy.owns_lock()) return run_here(n, task, context);
        add_workers(threads - 1);
        for (int64_t first = 0; first < n; first += kMaxJobTasks)
            run_job(first, std::min(n - first, kMaxJobTasks), threads, task, context);
    }

    std::vector<unsigned> idle_mxcsrs() {
        std::lock_guard<std::mutex> busy(run_mutex_);
        std::vector<unsigned> out;
        for (const auto& csr : idle_mxcsr_) out.push_back(csr.load());
        return out;
    }

    static void run_here(int64_t n, PoolTask task, void* context) {
        const bool outer = t_in_task;
        t_in_task = true;
        for (int64_t i = 0; i < n; ++i) task(context, i, 0);
        t_in_task = outer;
    }

private:
    // Thread t's share is the t-th of `threads` consecutive slices of the tasks. Consecutive
    // kernels cut their work alike (images, rows, channel blocks in order), so a thread tends
    // to read what it wrote itself in the kernel before: when the system places the threads'
    // cores in different last-level caches, handing tasks out first come, first served made
    // two threads as slow as one on this project's host (ResNet graph 6.2 ms on 2 threads
    // against 6.5 on one), the caches passing every tensor back and forth.
    void run_job(int64_t first, int64_t n, int threads, PoolTask task, void* context) {
        if (shares_.size() < size_t(threads)) shares_ = std::vector<Share>(size_t(threads));
        for (int t = 0; t < threads; ++t) {
            const int64_t begin = n * t / threads;
            shares_[size_t(t)].reset(first + begin, n * (t + 1) / threads - begin);
        }
        Job job{task, context, n, threads, _mm_getcsr(), shares_.data(), {}, {}, {}};
        job_.store(&job);
        generation_.fetch_add(1);
        if (sleepers_.load() > 0) {
            std::lock_guard<std::mutex> lock(sleep_mutex_);
            wake_.notify_all();
        }
        run_tasks(job, 0);
        // Only tasks a worker claimed can still be running; each finishes in its own time.
        for (int poll = 0; job.done.load(std::memory_order_acquire) < n; ++poll) pause_or_yield(poll);
        // Withdraw the job, then wait out workers that may hold its address (they only find
        // every share empty; a few instructions).
        job_.store(nullptr);
        for (int poll = 0; inside_.load() != 0; ++poll) pause_or_yield(poll);
        if (job.failed.load()) std::rethrow_exception(job.error);
    }

    // Runs the worker's own share from the front, then the others' from the back.
    static void run_tasks(Job& job, int worker) {
        t_in_task = true;
        int64_t finished = 0;
        for (int k = 0; k < job.threads; ++k) {
            Share& share = job.shares[(worker + k) % job.threads];
            for (int64_t i; share.claim(k != 0, i); ++finished) {
                // A task that throws (a failed allocation) still counts as done, so that the
                // call ends; the caller rethrows the first exception once every task has run.
                try {
                    job.task(job.context, i, worker);
                } catch (...) {
                    if (!job.failed.exchange(true)) job.error = std::current_exception();
                }
            }
        }
        job.done.fetch_add(finished, std::memory_order_release);
        t_in_task = false;
    }

    void add_workers(int wanted) {
        while (workers_started_ < wanted) {
            const int id = ++workers_started_;
            idle_mxcsr_.emplace_back(kDefaultMxcsr);
            std::thread(&Pool::work, this, id).detach();
        }
    }

    void work(int id) {
        // A new thread inherits its creator's MXCSR, here a kernel's (flush-to-zero set): start
        // from the power-on default instead (exceptions masked, round to nearest).
        _mm_setcsr(kDefaultMxcsr);
        std::atomic<unsigned>& idle_mxcsr = idle_mxcsr_[size_t(id - 1)];
        idle_mxcsr.store(_mm_getcsr());
        uint64_t seen = 0;
        for (;;) {
            seen = wait_for_job(seen);
            inside_.fetch_add(1);
            if (Job* job = job_.load(); job != nullptr && id < job->threads) {
                const unsigned own = _mm_getcsr();
                _mm_setcsr(job->mxcsr);
                run_tasks(*job, id);
                _mm_setcsr(own);
                idle_mxcsr.store(_mm_getcsr());
            }
            inside_.fetch_sub(1);
        }
    }

    // Returns the first generation after `seen`, polling, then sleeping.
    uint64_t wait_for_job(uint64_t seen) {
        const auto until = std::chrono::steady_clock::now() + kIdleSpin;
        for (int poll = 0;; ++poll) {
            const uint64_t now = generation_.load(std::memory_order_acquire);
            if (now != seen) return now;
            pause_or_yield(poll);
            if (poll % kYieldEvery == 0 && std::chrono::steady_clock::now() > until) break;
        }
        std::unique_lock<std::mutex> lock(sleep_mutex_);
        sleepers_.fetch_add(1);
        wake_.wait(lock, [&] { return generation_.load() != seen; });
        sleepers_.fetch_sub(1);
        return generation_.load();
    }

    std::mutex run_mutex_;                 // one job at a time; other callers run theirs alone
    std::atomic<Job*> job_{nullptr};       // the job being run, for workers to join
    std::atomic<uint64_t> generation_{0};  // bumped for every job
    std::atomic<int> inside_{0};           // workers that may hold job_'s address
    int workers_started_ = 0;              // guarded by run_mutex_
    std::deque<std::atomic<unsigned>> idle_mxcsr_;  // each worker's MXCSR between jobs (grown under run_mutex_)
    std::vector<Share> shares_;            // the running job's, reused (guarded by run_mutex_)
    std::mutex sleep_mutex_;
    std::condition_variable wake_;
    std::atomic<int> sleepers_{0};
};

// Never destroyed: its detached threads may still poll it while the process exits.
Pool* const g_pool = new Pool;

// A forked child has none of the parent's threads; it runs every job on its calling thread.
std::atomic<bool> g_forked_child{false};
const int g_fork_handler = pthread_atfork(nullptr, nullptr, [] { g_forked_child.store(true); });

}  // namespace

std::vector<unsigned> pool_idle_mxcsrs() { return g_pool->idle_mxcsrs(); }

void run_on_pool(int64_t n, int threads, PoolTask task, void* context) {
    if (n <= 0) return;
    if (threads <= 1 || n == 1 || t_in_task || g_forked_child.load(std::memory_order_relaxed))
        return Pool::run_here(n, task, context);
    g_pool->run(n, threads, task, context);
}

}  // namespace pyconv
