"""pyconv.testing: the finite-difference helpers and gradcheck, which must pass correct
backward passes and catch wrong ones (a Function with a planted wrong gradient)."""
import numpy as np
import pytest

import pyconv.nn.functional as F
from pyconv import Tensor
from pyconv.autograd import Function
from pyconv.testing import central_difference, gradcheck, numeric_gradient


def t(shape, seed=0, requires_grad=True):
    return Tensor(np.random.default_rng(seed).uniform(-1, 1, shape), requires_grad=requires_grad)


class Square(Function):
    def forward(self, a):
        self.a = a
        return a * a

    def backward(self, g):
        return 2 * self.a * g


class WrongSquare(Square):
    def backward(self, g):
        return g * self.a  # should be 2 a


class ScaledProduct(Function):
    """a * b * scale; with `wrong_b`, the gradient of b is off in one element."""

    def __init__(self, scale, wrong_b=False):
        self.scale, self.wrong_b = scale, wrong_b

    def forward(self, a, b):
        self.a, self.b = a, b
        return a * b * self.scale

    def backward(self, g):
        gb = g * self.a * self.scale
        if self.wrong_b:
            gb = gb.copy()
            gb[1, 2] += 0.5
        return g * self.b * self.scale, gb


class ForgetsAnInput(ScaledProduct):
    def backward(self, g):
        return g * self.b * self.scale, None  # b needs a gradient but gets none


# --- central differences on plain arrays


def test_central_difference_is_the_slope_and_restores_the_array():
    a = np.array([1.0, 2.0, 3.0])
    slope = central_difference(lambda: float((a ** 3).sum()), a, 1)
    assert slope == pytest.approx(12.0, rel=1e-8)
    np.testing.assert_array_equal(a, [1.0, 2.0, 3.0])


def test_numeric_gradient_of_every_element():
    x = np.random.default_rng(1).standard_normal((2, 3))
    before = x.copy()
    grad = numeric_gradient(lambda: float(np.tanh(x).sum()), x)
    np.testing.assert_allclose(grad, 1 - np.tanh(x) ** 2, rtol=1e-7, atol=1e-9)
    np.testing.assert_array_equal(x, before)
    assert grad.dtype == np.float64 and grad.shape == x.shape


# --- gradcheck passes correct gradients


def test_gradcheck_passes_a_correct_function():
    x = t((3, 4))
    before = x.data.copy()
    assert gradcheck(lambda x: Square()(x), [x]) is True
    np.testing.assert_array_equal(x.data, before)  # every perturbation undone


def test_gradcheck_passes_non_tensor_arguments_through():
    assert gradcheck(lambda a, s, b: ScaledProduct(s)(a, b), [t((2, 3)), 2.5, t((2, 3), seed=1)])


def test_gradcheck_checks_only_inputs_that_require_grad():
    # b's gradient is wrong, but b does not require one: nothing to check there.
    a, b = t((2, 3)), t((2, 3), seed=1, requires_grad=False)
    assert gradcheck(lambda a, b: ScaledProduct(1.0, wrong_b=True)(a, b), [a, b])


def test_gradcheck_accepts_nested_tuple_outputs():
    def fn(x):
        y = Square()(x)
        return y, (y * 2, "not a tensor")

    assert gradcheck(fn, [t((4,))])


def test_gradcheck_runs_the_real_kernels():
    x, w = t((1, 2, 4, 4)), t((3, 2, 3, 3), seed=1)
    assert gradcheck(lambda x, w: F.conv2d(x, w, padding=1), [x, w])


# --- gradcheck catches wrong gradients


def test_gradcheck_catches_a_planted_wrong_backward():
    with pytest.raises(AssertionError, match=r"input 0 \(shape \(3,\)\).*analytic.*numeric") as info:
        gradcheck(lambda a: WrongSquare()(a), [t((3,))])
    assert "3 of 3 elements differ" in str(info.value)


def test_gradcheck_names_the_wrong_input_and_element():
    a, b = t((2, 3)), t((2, 3), seed=1)
    with pytest.raises(AssertionError, match=r"input 1 \(shape \(2, 3\)\): at index \(1, 2\)") as info:
        gradcheck(lambda a, b: ScaledProduct(1.5, wrong_b=True)(a, b), [a, b])
    assert "1 of 6 elements differ" in str(info.value)


def test_gradcheck_catches_a_missing_gradient():
    with pytest.raises(AssertionError, match="input 1"):
        gradcheck(lambda a, b: ForgetsAnInput(1.0)(a, b), [t((2, 3)), t((2, 3), seed=1)])


def test_gradcheck_catches_a_wrong_gradient_in_a_second_output():
    def fn(x):
        return Square()(x), WrongSquare()(x)

    with pytest.raises(AssertionError, match="analytic"):
        gradcheck(fn, [t((3,))])


def test_gradcheck_tolerances():
    class SlightlyOff(Square):
        def backward(self, g):
            return 2 * self.a * g + 1e-4

    fn = lambda a: SlightlyOff()(a)  # noqa: E731
    with pytest.raises(AssertionError):
        gradcheck(fn, [t((3,))])
    assert gradcheck(fn, [t((3,))], atol=1e-3)


def test_gradcheck_needs_an_output_that_depends_on_a_checked_input():
    with pytest.raises(ValueError, match="no output depends"):
        gradcheck(lambda a: Square()(a), [t((3,), requires_grad=False)])
