"""common/step_barrier.h, the LSTM's per-step barrier, keeps a team in step: compiled into a
small program that runs a parallel region of many meetings, in which each thread writes its
slot, waits, and checks every other thread's slot, at team sizes up to more threads than the
machine has processors (where the barrier yields instead of spinning)."""
import os
import shutil
import subprocess
from pathlib import Path

import pytest

CSRC = Path(__file__).resolve().parent.parent / "csrc"

PROGRAM = r"""
#include "common/step_barrier.h"
#include <cstdio>

int main(int argc, char** argv) {
    const int threads = std::atoi(argv[1]), steps = std::atoi(argv[2]);
    std::vector<std::atomic<int>> slot(threads);
    for (auto& s : slot) s.store(-1);
    std::atomic<long> wrong{0};
    pyconv::generic::StepBarrier barrier;
#pragma omp parallel num_threads(threads)
    {
        const int me = omp_get_thread_num(), team = omp_get_num_threads();
        for (int step = 0; step < steps; ++step) {
            slot[me].store(step, std::memory_order_relaxed);
            barrier.wait();  // every slot holds this step
            for (int t = 0; t < team; ++t)
                if (slot[t].load(std::memory_order_relaxed) != step) wrong.fetch_add(1);
            barrier.wait();  // every thread checked before any writes the next step
        }
    }
    std::printf("%ld\n", wrong.load());
    return wrong.load() != 0;
}
"""


@pytest.fixture(scope="module")
def program(tmp_path_factory):
    if shutil.which("g++") is None:
        pytest.skip("g++ is not installed")
    d = tmp_path_factory.mktemp("step_barrier")
    (d / "main.cpp").write_text(PROGRAM)
    exe = d / "step_barrier"
    subprocess.run(["g++", "-std=c++17", "-O2", "-fopenmp", f"-I{CSRC}", str(d / "main.cpp"),
                    "-o", str(exe)], check=True, capture_output=True, timeout=300)
    return exe


@pytest.mark.parametrize("threads", [1, 2, 3, (os.cpu_count() or 1) + 1])
def test_every_thread_sees_every_write_of_the_step(program, threads):
    # A barrier that never releases shows as TimeoutExpired (the program takes well under 1 s).
    proc = subprocess.run([str(program), str(threads), "2000"], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0 and proc.stdout.strip() == "0", (
        f"{threads} threads: {proc.stdout.strip()} stale slots seen after the barrier {proc.stderr}")
