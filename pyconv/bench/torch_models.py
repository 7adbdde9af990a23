"""``pyconv bench --torch-model``: PyTorch models converted to pyconv (``pyconv.torch.convert``)
against the same models on PyTorch's own kernels, in one process.

Two models: a ResNet-style classifier (conv, batch norm, ReLU, max and average pooling,
residual blocks) and a DCGAN (transpose-convolution generator, convolutional discriminator).
For each: the forward pass (no grad) and one training step (forward, loss, backward, optimiser
step; for the DCGAN a discriminator step and a generator step), native and converted timed
interleaved, one call of each in turn, medians reported. Then the ResNet's converted layers one
by one (forward + backward on the input each sees in the network), to show where time goes.
Ratios are native time / pyconv time: above 1, pyconv is faster. Besides wall-clock time, the
whole-model passes are timed a second time in CPU time of the process (all threads): on a
shared machine the wall-clock time of a 2-thread step depends on when the scheduler runs the
second thread, its CPU time much less (idle OpenMP workers that sleep cost none; spinning
ones count).
"""
from __future__ import annotations

import copy
import os
import time

from .measure import interleaved_medians


def _resnet(nn, width=32, classes=10):
    class Block(nn.Module):
        def __init__(self, c):
            super().__init__()
            self.conv1, self.bn1 = nn.Conv2d(c, c, 3, padding=1, bias=False), nn.BatchNorm2d(c)
            self.conv2, self.bn2 = nn.Conv2d(c, c, 3, padding=1, bias=False), nn.BatchNorm2d(c)
            self.relu = nn.ReLU()

        def forward(self, x):
            return self.relu(x + self.bn2(self.conv2(self.relu(self.bn1(self.conv1(x))))))

    return nn.Sequential(
        nn.Conv2d(3, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU(),
        Block(width), nn.MaxPool2d(2),
        nn.Conv2d(width, 2 * width, 3, padding=1, bias=False), nn.BatchNorm2d(2 * width), nn.ReLU(),
        Block(2 * width), nn.AvgPool2d(2),
        nn.Flatten(), nn.Linear(2 * width * 8 * 8, classes))


def _dcgan(nn, nz=100):
    generator = nn.Sequential(
        nn.Unflatten(1, (nz, 1, 1)),
        nn.ConvTranspose2d(nz, 128, 7, bias=False), nn.BatchNorm2d(128), nn.ReLU(),
        nn.ConvTranspose2d(128, 64, 4, 2, 1, bias=False), nn.BatchNorm2d(64), nn.ReLU(),
        nn.ConvTranspose2d(64, 1, 4, 2, 1), nn.Tanh())
    discriminator = nn.Sequential(
        nn.Conv2d(1, 64, 4, 2, 1), nn.LeakyReLU(0.2),
        nn.Conv2d(64, 128, 4, 2, 1, bias=False), nn.BatchNorm2d(128), nn.LeakyReLU(0.2),
        nn.Flatten(), nn.Linear(128 * 7 * 7, 1))
    return nn.ModuleDict({"generator": generator, "discriminator": discriminator})


def _classifier_steps(torch, model, x, y):
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    loss_fn = torch.nn.functional.cross_entropy

    def forward():
        with torch.no_grad():
            return model(x)

    def train_step():
        opt.zero_grad()
        loss = loss_fn(model(x), y)
        loss.backward()
        opt.step()
        return loss
    return forward, train_step


def _gan_steps(torch, gan, z, real):
    g, d = gan["generator"], gan["discriminator"]
    opt_g = torch.optim.Adam(g.parameters(), lr=2e-4, betas=(0.5, 0.999))
    opt_d = torch.optim.Adam(d.parameters(), lr=2e-4, betas=(0.5, 0.999))
    bce = torch.nn.functional.binary_cross_entropy_with_logits
    ones, zeros = torch.ones(len(z), 1), torch.zeros(len(z), 1)

    def forward():
        with torch.no_grad():
            return d(g(z))

    def train_step():
        fake = g(z)
        opt_d.zero_grad()
        (bce(d(real), ones) + bce(d(fake.detach()), zeros)).backward()
        opt_d.step()
        opt_g.zero_grad()
        bce(d(fake), ones).backward()  # the non-saturating generator loss
        opt_g.step()
    return forward, train_step


def _layer_inputs(torch, model, x):
    """Converted-module path -> the input that module sees in a forward pass of `model`."""
    from pyconv.torch.nn import CONVERTIBLE

    seen, hooks = {}, []

    def keeper(path):
        def hook(module, args, output):
            seen.setdefault(path, args[0].detach())
        return hook
    for path, m in model.named_modules():
        if type(m) in CONVERTIBLE:
            hooks.append(m.register_forward_hook(keeper(path)))
    with torch.no_grad():
        model(x)
    for h in hooks:
        h.remove()
    return seen


def _layer_rows(torch, native, converted, x, reps):
    rows = []
    for path, inp in _layer_inputs(torch, native, x).items():
        pair = {"torch": native.get_submodule(path), "pyconv": converted.get_submodule(path)}
        inp = inp.clone().requires_grad_()

        def fwd_bwd(m):
            def run():
                out = m(inp)
                out = out[0] if isinstance(out, tuple) else out
                out.backward(torch.ones_like(out))
            return run
        runs = {k: fwd_bwd(m) for k, m in pair.items()}
        med = interleaved_medians(runs, reps)
        cpu = interleaved_medians(runs, reps, clock=time.process_time)
        rows.append((path, type(pair["torch"]).__name__, tuple(inp.shape), med, cpu))
    return rows


def _loaded_openmp():
    """The OpenMP runtimes mapped into this process (pyconv's and torch's may be one)."""
    try:
        with open("/proc/self/maps") as fh:
            return sorted({line.split()[-1] for line in fh if "libgomp" in line or "libiomp" in line})
    except OSError:
        return []


def main(threads=2, reps=None, quick=False):
    import torch

    import pyconv
    import pyconv.torch as pt

    reps = reps or (3 if quick else 7)
    pyconv.set_num_threads(threads)
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    batch = 8 if quick else 32
    nn = torch.nn
    models = {
        "ResNet-style (32x32x3, width 32)": (
            _resnet(nn), _classifier_steps,
            (torch.randn(batch, 3, 32, 32), torch.randint(0, 10, (batch,)))),
        "DCGAN (28x28, nz 100)": (
            _dcgan(nn), _gan_steps, (torch.randn(2 * batch, 100), torch.randn(2 * batch, 1, 28, 28))),
    }
    print(f"PyTorch {torch.__version__}, pyconv {pyconv.__version__} (backend cpu, "
          f"ISA {pyconv.info().get('isa')}), {threads} threads each, batch {batch}; "
          f"OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', '(unset)')}; OpenMP runtimes "
          f"loaded: {', '.join(_loaded_openmp()) or 'none found'}; load average "
          f"{os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
    print("| model | pass | torch ms | pyconv ms | torch / pyconv | torch CPU ms | pyconv CPU ms | "
          "torch / pyconv (CPU) |")
    print("|---|---|---|---|---|---|---|---|")
    results = {}
    for name, (native, make_steps, data) in models.items():
        converted = pt.convert(copy.deepcopy(native))
        native_steps = make_steps(torch, native, *data)
        pyconv_steps = make_steps(torch, converted, *data)
        for i, what in enumerate(("forward", "training step")):
            pair = {"torch": native_steps[i], "pyconv": pyconv_steps[i]}
            med = interleaved_medians(pair, reps)
            cpu = interleaved_medians(pair, reps, clock=time.process_time)
            results[(name, what)] = med, cpu
            print(f"| {name} | {what} | {med['torch'] * 1e3:.1f} | {med['pyconv'] * 1e3:.1f} | "
                  f"{med['torch'] / med['pyconv']:.2f} | {cpu['torch'] * 1e3:.1f} | "
                  f"{cpu['pyconv'] * 1e3:.1f} | {cpu['torch'] / cpu['pyconv']:.2f} |", flush=True)
    native, _, (x, _) = models["ResNet-style (32x32x3, width 32)"]
    converted = pt.convert(copy.deepcopy(native))
    print("\nResNet-style, converted layers one by one (forward + backward on the input each sees):")
    print("| layer | type | input | torch ms | pyconv ms | torch / pyconv | torch CPU ms | "
          "pyconv CPU ms | torch / pyconv (CPU) |")
    print("|---|---|---|---|---|---|---|---|---|")
    for path, kind, shape, med, cpu in _layer_rows(torch, native, converted, x, reps):
        print(f"| {path} | {kind} | {shape} | {med['torch'] * 1e3:.2f} | {med['pyconv'] * 1e3:.2f} | "
              f"{med['torch'] / med['pyconv']:.2f} | {cpu['torch'] * 1e3:.2f} | "
              f"{cpu['pyconv'] * 1e3:.2f} | {cpu['torch'] / cpu['pyconv']:.2f} |", flush=True)
    return results
