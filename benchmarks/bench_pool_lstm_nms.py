"""Pooling, LSTM and NMS on the cpu backend against PyTorch, OpenCV and the vectorised NumPy
NMS, as a pytest-benchmark suite."""
from pyconv import bench

OPS = ("max_pool2d", "avg_pool2d", "lstm", "lstm fwd+bwd", "lstm_cell", "nms")
CASES = [c for c in bench.cases(quick=False) if c.op in OPS]
IMPLS = ("cpu", "torch", "opencv", "numpy greedy")


def test_case(time_case, case, impl):
    time_case(case, impl)
