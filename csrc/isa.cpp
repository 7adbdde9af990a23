// Run-time choice of the kernel table, and the thread count every kernel uses.
#include <pthread.h>
#include <sched.h>

#include <algorithm>
#include <atomic>
#include <cstdlib>
#include <cstring>
#include <stdexcept>
#include <string>

#include "kernels.h"

namespace pyconv {

Isa best_supported_isa() {
    __builtin_cpu_init();
    // __builtin_cpu_supports consults CPUID and the OS's XSAVE state, so an AVX-512 CPU whose
    // kernel does not save zmm registers (or valgrind, which hides AVX-512) reports false.
    if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
        __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq"))
        return Isa::avx512;
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) return Isa::avx2;
    return Isa::generic;
}

const char* isa_name(Isa isa) {
    switch (isa) {
        case Isa::avx512: return "avx512";
        case Isa::avx2: return "avx2";
        default: return "generic";
    }
}

static Isa initial_isa() {
    Isa best = best_supported_isa();
    // PYCONV_ISA lowers the choice (tests run every variant on one machine); it never raises it.
    const char* forced = std::getenv("PYCONV_ISA");
    if (forced == nullptr || *forced == '\0') return best;
    for (Isa isa : {Isa::generic, Isa::avx2, Isa::avx512})
        if (std::strcmp(forced, isa_name(isa)) == 0) return isa <= best ? isa : best;
    return best;
}

static std::atomic<int> g_isa{static_cast<int>(initial_isa())};

Isa active_isa() { return static_cast<Isa>(g_isa.load(std::memory_order_relaxed)); }

void set_active_isa(Isa isa) {
    if (isa > best_supported_isa())
        throw std::invalid_argument(std::string("this CPU cannot run ISA '") + isa_name(isa) +
                                    "'; the best it supports is '" +
                                    isa_name(best_supported_isa()) + "'");
    g_isa.store(static_cast<int>(isa));
}

const KernelTable& active_table() {
    switch (active_isa()) {
        case Isa::avx512: return table_avx512;
        case Isa::avx2: return table_avx2;
        default: return table_generic;
    }
}

// The default thread count: OMP_NUM_THREADS where set (the variable every threaded numeric
// library reads; its first entry), else the CPUs this process may run on.
static int default_threads() {
    if (const char* s = std::getenv("OMP_NUM_THREADS")) {
        char* end = nullptr;
        const long n = std::strtol(s, &end, 10);
        if (end != s && n >= 1 && n <= 4096) return int(n);
    }
    cpu_set_t cpus;
    if (sched_getaffinity(0, sizeof(cpus), &cpus) == 0) return std::max(1, CPU_COUNT(&cpus));
    return 1;
}

static std::atomic<int> g_threads{default_threads()};

// Fork safety. A child forked while the kernels' thread pool exists (common/thread_pool.h)
// has none of its threads: in a forked child every kernel runs on the calling thread alone,
// whatever set_num_threads asks for (a process pool of forked workers is parallel across its
// processes anyway).
static std::atomic<bool> g_forked_child{false};

static void on_fork_in_child() { g_forked_child.store(true); }

static const int g_fork_handler = pthread_atfork(nullptr, nullptr, on_fork_in_child);

int num_threads() {
    return g_forked_child.load(std::memory_order_relaxed) ? 1 : g_threads.load(std::memory_order_relaxed);
}

void set_num_threads(int n) {
    if (n < 1) throw std::invalid_argument("number of threads must be >= 1");
    g_threads.store(n);
}

}  // namespace pyconv
