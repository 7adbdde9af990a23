"""The C++ kernels' thread pool (csrc/common/thread_pool.h): every task runs exactly once
whoever calls and however many threads there are, callers from several Python threads at
once, more threads than cores, and the default thread count."""
import os
import subprocess
import sys
import threading

import numpy as np
import pytest

import pyconv
from pyconv import ops

pytestmark = pytest.mark.skipif("cpu" not in pyconv.backends(), reason="the cpu backend is not built")


@pytest.fixture
def threads():
    before = pyconv.get_num_threads()
    yield pyconv.set_num_threads
    pyconv.set_num_threads(before)


def conv_case(seed):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((8, 16, 20, 20)).astype(np.float32)
    w = rng.standard_normal((32, 16, 3, 3)).astype(np.float32)
    return x, w


@pytest.mark.parametrize("n", [1, 2, 3, 8, 17])
def test_any_thread_count_gives_the_same_bits(threads, n):
    """Including more threads than the machine has cores: the pool's extra workers wait for
    their turn, and every task still runs once."""
    x, w = conv_case(0)
    threads(1)
    expected = ops.conv2d(x, w, padding=1)
    relu_expected = ops.relu(np.resize(x, 1 << 17) - 0.5)
    threads(n)
    for _ in range(3):
        np.testing.assert_array_equal(ops.conv2d(x, w, padding=1), expected)
        np.testing.assert_array_equal(ops.relu(np.resize(x, 1 << 17) - 0.5), relu_expected)


def test_callers_on_several_python_threads(threads):
    """Kernels release the GIL: two Python threads calling at once share the pool (one of
    them runs its tasks alone while the other holds it) and both get their own right answer."""
    threads(2)
    cases = [conv_case(seed) for seed in range(4)]
    expected = [ops.conv2d(x, w, padding=1) for x, w in cases]
    failures = []

    def run(i):
        x, w = cases[i]
        for _ in range(20):
            if not np.array_equal(ops.conv2d(x, w, padding=1), expected[i]):
                failures.append(i)

    workers = [threading.Thread(target=run, args=(i,)) for i in range(4)]
    for t in workers:
        t.start()
    for t in workers:
        t.join(timeout=120)
    assert not any(t.is_alive() for t in workers), "a caller hung"
    assert failures == []


def test_default_thread_count_follows_omp_num_threads():
    code = "import pyconv; print(pyconv.get_num_threads())"
    env = dict(os.environ, OMP_NUM_THREADS="3,2")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert out.stdout.strip() == "3", out.stderr
    env.pop("OMP_NUM_THREADS")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert out.stdout.strip() == str(len(os.sched_getaffinity(0))), out.stderr
