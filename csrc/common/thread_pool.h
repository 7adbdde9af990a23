// The kernels' thread pool: runs n independent tasks on up to `threads` threads, the calling
// thread one of them, and returns when all n have run.
//
// Why not an OpenMP parallel region: a region ends only when every thread of its team has
// arrived, so a team member that has not been scheduled yet (its core taken by another
// process, or by the hypervisor) holds the caller for a scheduler time slice, and libgomp's
// spinning waiters then compete with the very thread they wait for. On this project's 2-core
// development host, with one other busy process, a 2-thread 384^3 GEMM took 2x the time of
// one thread that way. Here each thread first runs its own share of the tasks (thread t the
// t-th of `threads` consecutive slices, so that consecutive kernels cut alike find their data
// in the cache that wrote it), then takes tasks others have not started from the back of
// their shares; the caller waits only for tasks a worker has actually started: a worker that
// wakes late finds its share done and goes back to sleep. Idle workers spin briefly, yielding
// the core, then sleep.
//
// A task's exception reaches the caller once every task has run (the first one, if several
// throw). Results must not depend on which thread runs a task (pass `worker`, in
// [0, threads), only to pick per-thread scratch). A call from inside a task, from
// a second thread while the pool is busy, or in a forked child runs its tasks on the calling
// thread, in order.
#pragma once

#include <cstdint>
#include <type_traits>
#include <vector>

namespace pyconv {

int num_threads();  // kernels.h

// The kernels' thread count where a pass is worth splitting, else 1.
inline int threads_if(bool worth_splitting) { return worth_splitting ? num_threads() : 1; }

using PoolTask = void (*)(void* context, int64_t task, int worker);

// Runs task(context, i, worker) for i in [0, n); the calling thread is worker 0. Each worker
// runs with the caller's MXCSR (flush-to-zero, rounding) and restores its own afterwards.
void run_on_pool(int64_t n, int threads, PoolTask task, void* context);

// Each of the pool's worker threads' MXCSR between jobs (its own, restored after each job).
std::vector<unsigned> pool_idle_mxcsrs();

// Runs task(i, worker) for i in [0, n) on up to `threads` threads (see above).
template <class F>
void parallel_tasks(int64_t n, int threads, F&& task) {
    using Task = std::remove_reference_t<F>;
    run_on_pool(n, threads, [](void* f, int64_t i, int worker) { (*static_cast<Task*>(f))(i, worker); },
                const_cast<void*>(static_cast<const void*>(&task)));
}

// Loops cut into tasks of consecutive iterations, about kChunksPerThread per thread: enough
// for a thread that loses its core to leave most of its share to the others, few enough that
// claiming a chunk costs nothing next to running it.
constexpr int64_t kChunksPerThread = 4;

// Runs body(begin, end, worker) over [0, n) cut into `chunks` near-equal consecutive ranges.
template <class F>
void parallel_ranges(int64_t n, int64_t chunks, int threads, F&& body) {
    if (n <= 0) return;
    chunks = chunks < 1 ? 1 : chunks > n ? n : chunks;
    parallel_tasks(chunks, threads, [&](int64_t c, int worker) { body(n * c / chunks, n * (c + 1) / chunks, worker); });
}

// Runs body(begin, end, worker) over [0, n) in about kChunksPerThread ranges per thread.
template <class F>
void parallel_ranges(int64_t n, int threads, F&& body) {
    parallel_ranges(n, threads <= 1 ? 1 : int64_t(threads) * kChunksPerThread, threads, body);
}

// Runs body(i, worker) for every i in [0, n), in about kChunksPerThread ranges per thread.
template <class F>
void parallel_for(int64_t n, int threads, F&& body) {
    parallel_ranges(n, threads, [&](int64_t begin, int64_t end, int worker) {
        for (int64_t i = begin; i < end; ++i) body(i, worker);
    });
}

}  // namespace pyconv
