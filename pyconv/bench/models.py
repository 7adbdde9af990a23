"""Whole networks: one training step (forward, loss, backward, optimiser step) of small models
built from pyconv.nn, against a PyTorch twin holding identical weights; and the same models
layer by layer (forward + backward of each layer on the input it sees in the network)."""
from __future__ import annotations


import numpy as np

import pyconv
from .kernels import _f32
from .measure import Case, _torch


def _dcgan_generator(nn):
    return nn.Sequential(
        nn.ConvTranspose2d(100, 128, 7, bias=False), nn.BatchNorm2d(128), nn.ReLU(),
        nn.ConvTranspose2d(128, 64, 4, 2, 1, bias=False), nn.BatchNorm2d(64), nn.ReLU(),
        nn.ConvTranspose2d(64, 1, 4, 2, 1), nn.Tanh())


def _dcgan_discriminator(nn):
    return nn.Sequential(
        nn.Conv2d(1, 64, 4, 2, 1), nn.LeakyReLU(0.2),
        nn.Conv2d(64, 128, 4, 2, 1, bias=False), nn.BatchNorm2d(128), nn.LeakyReLU(0.2),
        nn.Flatten(), nn.Linear(128 * 7 * 7, 1))


def _vgg_block(nn):
    return nn.Sequential(
        nn.Conv2d(3, 64, 3, padding=1), nn.ReLU(), nn.Conv2d(64, 64, 3, padding=1), nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(64, 128, 3, padding=1), nn.ReLU(), nn.Conv2d(128, 128, 3, padding=1), nn.ReLU(),
        nn.MaxPool2d(2), nn.Flatten(), nn.Linear(128 * 8 * 8, 10))


def _leaves(module):
    """The layers of a model whose forward runs its children in order, flattened."""
    children = list(module.children())
    if not children:
        return [module]
    return [leaf for child in children for leaf in _leaves(child)]


def _twin(model):
    """(the pyconv model's layers, a torch.nn.Sequential twin with the same weights)."""
    import torch

    from .twins import torch_layer

    layers = _leaves(model)
    return layers, torch.nn.Sequential(*(torch_layer(layer) for layer in layers))


# name, model builder (takes pyconv.nn), input shape, loss ("ce": 10 classes, "bce": one logit,
# "mse": against an image batch of the output's shape).
_MODELS = (
    ("LeNet-5 64x1x32x32", lambda nn: __import__("pyconv.models", fromlist=["LeNet5"]).LeNet5(),
     (64, 1, 32, 32), "ce"),
    ("DCGAN generator 64x100 -> 1x28x28", _dcgan_generator, (64, 100, 1, 1), "mse"),
    ("DCGAN discriminator 64x1x28x28", _dcgan_discriminator, (64, 1, 28, 28), "bce"),
    ("VGG block 16x3x32x32", _vgg_block, (16, 3, 32, 32), "ce"),
)


def _model_inputs(rng, shape, loss, out_shape):
    x = _f32(rng, *shape)
    if loss == "ce":
        target = rng.integers(0, out_shape[1], shape[0])
    elif loss == "bce":
        target = rng.integers(0, 2, out_shape).astype(np.float32)
    else:
        target = np.tanh(_f32(rng, *out_shape))
    return x, target


def _pyconv_loss(F, loss, out, target):
    if loss == "ce":
        return F.cross_entropy(out, target)
    if loss == "bce":
        return F.binary_cross_entropy_with_logits(out, target)
    return F.mse_loss(out, target)


def _torch_loss(loss, out, target):
    torch = _torch()
    F = torch.nn.functional
    if loss == "ce":
        return F.cross_entropy(out, target)
    if loss == "bce":
        return F.binary_cross_entropy_with_logits(out, target)
    return F.mse_loss(out, target)


def _model_case(name, build, shape, loss, lr=1e-3):
    from pyconv import Tensor, nn
    import pyconv.nn.functional as F
    from pyconv.optim import Adam

    def make(rng):
        torch = _torch()
        pyconv.manual_seed(0)
        model = build(nn)
        _, tmodel = _twin(model)
        x, target = _model_inputs(rng, shape, loss, model.output_shape(shape))
        tx, ttarget = torch.from_numpy(x), torch.from_numpy(target)
        opt, topt = Adam(model.parameters(), lr=lr), torch.optim.Adam(tmodel.parameters(), lr=lr)

        def step():
            value = _pyconv_loss(F, loss, model(Tensor(x)), target)
            opt.zero_grad()
            value.backward()
            opt.step()
            return value.item()

        def torch_step():
            value = _torch_loss(loss, tmodel(tx), ttarget)
            topt.zero_grad()
            value.backward()
            topt.step()
            return value.item()

        # The twin computes the same thing: the first losses agree to float32 round-off.
        with pyconv.use_backend("cpu" if "cpu" in pyconv.backends() else "reference"):
            ours = _pyconv_loss(F, loss, model(Tensor(x)), target).item()
        theirs = _torch_loss(loss, tmodel(tx), ttarget).item()
        assert abs(ours - theirs) <= 1e-4 * max(1.0, abs(theirs)), (name, ours, theirs)
        return {"step": step, "torch_step": torch_step}

    def run(a, be):
        with pyconv.use_backend(be):
            return a["step"]()

    baselines = {"torch": lambda a: a["torch_step"] if _torch() is not None else None}
    return Case("model step", name, ("conv2d", "conv2d_grad_input", "conv2d_grad_weight"), make, run,
                baselines=baselines, quick=True)


def _layer_case(model_name, index, layers, shape):
    """Forward + backward of layer `index` of a model on the input it sees there."""
    from pyconv import Tensor

    layer = layers[index]
    in_shape = tuple(shape)
    for previous in layers[:index]:
        in_shape = tuple(previous.output_shape(in_shape))

    def make(rng):
        from .twins import torch_layer

        torch = _torch()
        tlayer = torch_layer(layer)
        x = _f32(rng, *in_shape)
        gy = _f32(rng, *layer.output_shape(in_shape))
        tx, tgy = torch.from_numpy(x), torch.from_numpy(gy)
        # A network's input needs no gradient: the first layer computes none for it.
        needs_grad = index > 0
        tx.requires_grad_(needs_grad)
        xt = Tensor(x, requires_grad=needs_grad)

        def step():
            layer(xt).backward(gy)

        def torch_step():
            tlayer(tx).backward(tgy)
        return {"step": step, "torch_step": torch_step}

    def run(a, be):
        with pyconv.use_backend(be):
            return a["step"]()

    baselines = {"torch": lambda a: a["torch_step"] if _torch() is not None else None}
    return Case("layer fwd+bwd", f"{model_name} #{index} {layer!r} on {'x'.join(map(str, in_shape))}",
                (), make, run, baselines=baselines)


def model_cases(layers=True) -> list[Case]:
    """A training step of each model of _MODELS; with `layers`, then each of their layers that
    has parameters or pools (forward + backward on the input it sees in the network)."""
    from pyconv import nn

    out = []
    for name, build, shape, loss in _MODELS:
        out.append(_model_case(name, build, shape, loss))
        if layers:
            pyconv.manual_seed(0)
            model_layers = _leaves(build(nn))
            out += [_layer_case(name, i, model_layers, shape) for i, layer in enumerate(model_layers)
                    if layer._parameters or isinstance(layer, nn.MaxPool2d)]
    return out
