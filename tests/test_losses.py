"""The loss kernels beyond the conformance table: the accuracy of the C++ kernels'
vectorised exp and log1p (csrc/elementwise/vector_math.h) against float64, the stability of the
binary cross-entropy of logits far from zero, and results that do not depend on the thread
count."""
import numpy as np
import pytest

import pyconv
from pyconv import ops

pytestmark = pytest.mark.skipif("cpu" not in pyconv.backends(), reason="the cpu backend is not built")


def ulps(actual, exact, dtype):
    """|actual - exact| in units of the last place of exact rounded to dtype."""
    spacing = np.spacing(np.abs(exact.astype(dtype))).astype(np.float64)
    return np.abs(actual.astype(np.float64) - exact) / spacing


def kernel_exp(y):
    """exp(y) as the C++ kernels compute it: log_softmax_backward of rows [y, 0] with upstream
    gradient [0, 1] is [-exp(y), 1 - exp(0)]."""
    rows = np.stack([y, np.zeros_like(y)], axis=1)
    grad = np.zeros_like(rows)
    grad[:, 1] = 1
    return -ops.log_softmax_backward(grad, rows, backend="cpu")[:, 0]


def arguments(dtype, low, high):
    rng = np.random.default_rng(0)
    return np.concatenate([np.linspace(low, high, 20001), rng.uniform(low, high, 20000)]).astype(dtype)


@pytest.mark.parametrize("dtype, bound", [(np.float32, 1.5), (np.float64, 1.5)])
def test_exp_is_within_its_stated_error(isa, dtype, bound):
    lowest = -87.0 if dtype == np.float32 else -700.0  # results stay normal
    y = arguments(dtype, lowest, 0.0)
    assert ulps(kernel_exp(y), np.exp(y.astype(np.float64)), dtype).max() <= bound


@pytest.mark.parametrize("dtype, bound", [(np.float32, 1.5), (np.float64, 1.5)])
def test_softmax_exp_is_within_its_stated_error_and_zero_below_the_normal_range(isa, dtype, bound):
    """The forwards' exp of x - max(x) <= 0 (vexp_nonpositive): softmax of a row [0, y] is
    exp(y) / (1 + exp(y)), which is exp(y) itself, rounded once, while exp(y) is below half an
    ulp of 1 (y < -17.4 in float32, -37.5 in float64). Below the log of the smallest normal
    number it is 0 (a subnormal would be flushed), -inf gives 0 and NaN stays NaN."""
    lowest, highest = (-87.0, -17.5) if dtype == np.float32 else (-700.0, -38.0)
    y = arguments(dtype, lowest, highest)
    softmax_of = lambda v: ops.softmax(np.stack([np.zeros_like(v), v], axis=1), backend="cpu")[:, 1]
    assert ulps(softmax_of(y), np.exp(y.astype(np.float64)), dtype).max() <= bound
    tiny = np.finfo(dtype).tiny
    beyond = np.concatenate([arguments(dtype, 3 * np.log(tiny), np.log(tiny)), [-np.inf]]).astype(dtype)
    assert np.all((softmax_of(beyond) >= 0) & (softmax_of(beyond) <= tiny))
    assert np.isnan(softmax_of(np.array([np.nan], dtype)))[0]


def softplus(x):
    """log(1 + exp(x)) by the kernels: the binary cross-entropy of logit x against target 0."""
    return ops.binary_cross_entropy_with_logits(x[None], np.zeros((1, x.size), x.dtype), backend="cpu")[0]


@pytest.mark.parametrize("dtype, bound", [(np.float32, 3.5), (np.float64, 3.5)])
def test_softplus_is_within_its_stated_error_far_from_zero_too(isa, dtype, bound):
    """log1p(exp(-|x|)) and the linear part never cancel: the relative error stays a few ulps
    out to x = -80, where softplus(x) is 2e-35 (a form such as (1 - t) x + log(1 + exp(-x))
    cancels to 0 there)."""
    x = arguments(dtype, -80.0, 80.0)
    exact = np.logaddexp(0, x.astype(np.float64))
    assert ulps(softplus(x), exact, dtype).max() <= bound


@pytest.mark.parametrize("dtype, bound", [(np.float32, 2.0), (np.float64, 4.0)])
def test_log_sum_exp_of_rows_is_within_its_stated_error(isa, dtype, bound):
    """Each row's log-sum-exp m + log(sum exp(x - m)), which cross_entropy returns, in units of
    the last place of |m| + log(sum): for rows of up to 64 classes the log runs along vectors of
    rows (vlog_from_one), past that row by row (libm). The entries lie within 2 of their row's
    maximum, so that the sum is not a rounded 1 + tiny (whose log no formula recovers)."""
    rng = np.random.default_rng(2)
    for classes in (1, 3, 5, 16, 64, 65, 300):
        x = (rng.uniform(-2, 0, (2000, classes)) + rng.normal(0, 50, (2000, 1))).astype(dtype)
        x[:7] = 0  # sums of exactly `classes` ones
        _, lse = ops.cross_entropy(x, np.zeros(2000, np.int64), backend="cpu")
        wide = x.astype(np.longdouble)
        top = wide.max(axis=1)
        log_sum = np.log(np.exp(wide - top[:, None]).sum(axis=1))
        scale = np.spacing((np.abs(top) + log_sum).astype(dtype)).astype(np.longdouble)
        assert (np.abs(lse - (top + log_sum)) / scale).max() <= bound, classes


@pytest.mark.parametrize("rows, classes", [(3200, 65), (5000, 4)])  # row by row; blocks of rows
def test_cross_entropy_results_do_not_depend_on_the_thread_count(rows, classes):
    rng = np.random.default_rng(1)
    x = rng.standard_normal((rows, classes)).astype(np.float32)
    t = rng.integers(0, classes, rows)
    saved = pyconv.get_num_threads()
    results = []
    try:
        for threads in (1, 2, 3):
            pyconv.set_num_threads(threads)
            loss, lse = ops.cross_entropy(x, t, label_smoothing=0.1, backend="cpu")
            grad = ops.cross_entropy_backward(np.ones(rows, np.float32), x, t, lse,
                                              label_smoothing=0.1, backend="cpu")
            results.append((loss, lse, grad))
    finally:
        pyconv.set_num_threads(saved)
    for other in results[1:]:
        for a, b in zip(results[0], other):
            np.testing.assert_array_equal(a, b)
