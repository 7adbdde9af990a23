// The kernels' thread pool (common/thread_pool.h). One per process, shared by every ISA
// variant of the kernels; its threads are created on first use and live until the process ends.
#include "common/thread_pool.h"

#include <pthread.h>
#include <sched.h>
#include <xmmintrin.h>

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

struct Job {
    PoolTask task;
    void* context;
    int64_t n;
    int threads;
    unsigned mxcsr;
    std::atomic<int64_t> next{0};  // the next task to claim
    std::atomic<int64_t> done{0};  // tasks finished
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
        Job job{task, context, n, threads, _mm_getcsr()};
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
        // the counter exhausted; a few instructions).
        job_.store(nullptr);
        for (int poll = 0; inside_.load() != 0; ++poll) pause_or_yield(poll);
        if (job.failed.load()) std::rethrow_exception(job.error);
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
    static void run_tasks(Job& job, int worker) {
        t_in_task = true;
        for (int64_t i = job.next.fetch_add(1, std::memory_order_relaxed); i < job.n;
             i = job.next.fetch_add(1, std::memory_order_relaxed)) {
            // A task that throws (a failed allocation) still counts as done, so that the call
            // ends; the caller rethrows the first exception once every task has finished.
            try {
                job.task(job.context, i, worker);
            } catch (...) {
                if (!job.failed.exchange(true)) job.error = std::current_exception();
            }
            job.done.fetch_add(1, std::memory_order_release);
        }
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
