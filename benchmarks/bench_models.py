"""One training step (forward, loss, backward, Adam step) of small networks built from
pyconv.nn (LeNet-5, a DCGAN generator and discriminator, a VGG-style block) and of every model
of pyconv.models (pyconv.bench.twins) on the cpu backend against PyTorch twins holding the same
weights, and each of their layers (forward + backward), as a pytest-benchmark suite. ``pyconv bench --models`` times the same cases interleaved."""
from pyconv import bench

CASES = bench.model_cases()
IMPLS = ("cpu", "torch")


def test_model(time_case, case, impl):
    time_case(case, impl)
