"""The package imports in one direction, bottom to top: a module may import (at load time or
inside a function) only from its own layer or the layers below it. Drawn from the source with
`ast`, so a new upward import fails here before it makes a cycle."""
import ast
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent / "pyconv"

# Bottom to top. A module belongs to the first layer whose prefix matches its dotted name.
LAYERS = [
    ("random", "_spec", "filters", "serialization"),
    ("backends", "_C", "_numba_threading", "tuning"),
    ("ops",),
    ("autograd", "torch"),
    ("testing", "nn", "onnx"),
    ("optim", "data", "distributed"),
    ("train",),
    ("models",),
    ("pictures", "recipes", "bench"),
    ("cli", "__main__"),
]


def layer_of(module: str) -> int:
    """Layer index of a module given relative to pyconv ("nn.functional.conv")."""
    for i, prefixes in enumerate(LAYERS):
        if any(module == p or module.startswith(p + ".") for p in prefixes):
            return i
    raise AssertionError(f"pyconv.{module} is in no layer of tests/test_layering.py")


def modules():
    for path in sorted(ROOT.rglob("*.py")):
        parts = list(path.relative_to(ROOT).with_suffix("").parts)
        is_package = parts[-1] == "__init__"
        if is_package:
            parts = parts[:-1]
        if parts:  # pyconv/__init__.py is the façade over every layer
            yield ".".join(parts), is_package, path


def imported(module: str, is_package: bool, tree):
    """The pyconv modules that `module` imports, relative to pyconv."""
    package = module.split(".") if is_package else module.split(".")[:-1]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - (node.level - 1)] if node.level > 1 else package
                target = base + (node.module.split(".") if node.module else [])
                if not target:  # from . import x in a top-level module: x is a module or a name
                    yield from (a.name for a in node.names if is_module(a.name))
                    continue
                names = [".".join(["pyconv"] + target)]
            else:
                names = [node.module]
        else:
            continue
        for name in names:
            if name == "pyconv":
                continue
            if name.startswith("pyconv."):
                yield name[len("pyconv."):]


def is_module(name: str) -> bool:
    """Whether pyconv.<name> is a module (else a name that pyconv/__init__.py defines)."""
    path = ROOT.joinpath(*name.split("."))
    return path.with_suffix(".py").exists() or path.is_dir() or name == "_C"


CASES = list(modules())


@pytest.mark.parametrize("module, is_package, path", CASES, ids=[c[0] for c in CASES])
def test_imports_go_down(module, is_package, path):
    tree = ast.parse(path.read_text())
    mine = layer_of(module)
    upward = sorted({m for m in imported(module, is_package, tree) if layer_of(m) > mine})
    assert upward == [], f"pyconv.{module} imports from layers above it: {upward}"


def test_layer_table_covers_every_module():
    for module, _, _ in CASES:
        layer_of(module)
