// A barrier for the team of one parallel region whose threads meet many times in quick
// succession: an LSTM's threads meet once per time step, every 0.1-0.2 ms.
//
// libgomp's own barrier under the PASSIVE wait policy pyconv loads it with (pyconv/__init__.py)
// puts a thread that arrives first to sleep on a futex at once, and waking it takes tens of
// microseconds, paid at every step. This one spins first, for at most kSpinTicks of the
// time-stamp counter (about 0.1 ms), then yields its core until the last thread arrives (a
// partner that lost its core to another process). A team larger than the machine's processors
// does not spin at all: the spinning thread would hold a core that a late one needs.
//
// Every thread of the team must call wait() the same number of times. Writes made before
// wait() are visible to every thread after it (release / acquire on the generation).
#pragma once

#include "common/prelude.h"

namespace pyconv {
namespace PYCONV_ISA {

class StepBarrier {
public:
    StepBarrier() : processors_(omp_get_num_procs()) {}

    // Called by every thread of the enclosing parallel region.
    void wait() {
        const int team = omp_get_num_threads();
        if (team <= 1) return;
        const unsigned generation = generation_.load(std::memory_order_acquire);
        if (arrived_.fetch_add(1, std::memory_order_acq_rel) == team - 1) {
            // Last to arrive: reset the count for the next meeting, then release the others
            // (they read the count again only after they see the new generation).
            arrived_.store(0, std::memory_order_relaxed);
            generation_.store(generation + 1, std::memory_order_release);
            return;
        }
        const bool spin = team <= processors_;
        const uint64_t spin_until = spin ? __rdtsc() + kSpinTicks : 0;
        while (generation_.load(std::memory_order_acquire) == generation) {
            if (spin && __rdtsc() < spin_until) _mm_pause();
            else std::this_thread::yield();
        }
    }

private:
    static constexpr uint64_t kSpinTicks = uint64_t(1) << 18;  // 0.09-0.13 ms at 2-3 GHz
    alignas(64) std::atomic<int> arrived_{0};
    alignas(64) std::atomic<unsigned> generation_{0};
    const int processors_;
};

}  // namespace PYCONV_ISA
}  // namespace pyconv
