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


def training_steps(build, shape, loss, rng, lr=1e-3, device="cpu"):
    """A model built by `build` (takes pyconv.nn) and its PyTorch twin with the same weights,
    the same batch for both, and one Adam training step of each -> dict with ``model``,
    ``twin``, ``x``, ``target``, ``tx``, ``ttarget`` and the zero-argument ``step`` and
    ``torch_step`` (each returns its loss). `device`: "cpu" (NumPy) or "cuda" (CuPy and
    PyTorch CUDA tensors)."""
    from pyconv import Tensor, nn
    import pyconv.nn.functional as F
    from pyconv.optim import Adam

    torch = _torch()
    pyconv.manual_seed(0)
    model = build(nn)
    _, tmodel = _twin(model)
    x, target = _model_inputs(rng, shape, loss, model.output_shape(shape))
    tx, ttarget = torch.from_numpy(x), torch.from_numpy(target)
    if device == "cuda":
        import cupy

        model.to("cuda")
        tmodel, tx, ttarget = tmodel.cuda(), tx.cuda(), ttarget.cuda()
        x, target = cupy.asarray(x), cupy.asarray(target)
    opt, topt = Adam(model.parameters(), lr=lr), torch.optim.Adam(tmodel.parameters(), lr=lr)

    def step():
        value = _pyconv_loss(F, loss, model(Tensor(x)), target)
        opt.zero_grad()
        value.backward()
        opt.step()
        return float(value.item())

    def torch_step():
        value = _torch_loss(loss, tmodel(tx), ttarget)
        topt.zero_grad()
        value.backward()
        topt.step()
        return float(value.item())

    return {"model": model, "twin": tmodel, "x": x, "target": target, "tx": tx,
            "ttarget": ttarget, "step": step, "torch_step": torch_step}


def _model_case(name, build, shape, loss, lr=1e-3):
    from pyconv import Tensor
    import pyconv.nn.functional as F

    def make(rng):
        s = training_steps(build, shape, loss, rng, lr)
        # The twin computes the same thing: the first losses agree to float32 round-off.
        with pyconv.use_backend("cpu" if "cpu" in pyconv.backends() else "reference"):
            ours = _pyconv_loss(F, loss, s["model"](Tensor(s["x"])), s["target"]).item()
        theirs = _torch_loss(loss, s["twin"](s["tx"]), s["ttarget"]).item()
        assert abs(ours - theirs) <= 1e-4 * max(1.0, abs(theirs)), (name, ours, theirs)
        return s

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


# ---------------------------------------------------------------------------------------------
# The models of pyconv.models against their twins (pyconv.bench.twins), on the shapes their
# recipes train on: batch 64 of MNIST-sized (32x32, the recipes' size for MNIST) images, text
# windows T=100 of 32 streams, 32 DNA sequences of 80 bases.


def _images(rng, n=64, size=32):
    return rng.random((n, 1, size, size), dtype=np.float32)


def _dcgan_batch(rng):
    return {"real": _images(rng) * 2 - 1, "z": rng.standard_normal((64, 32), dtype=np.float32),
            "labels": rng.integers(0, 10, 64)}


def _gan_steps(lr=5e-4, betas=(0.5, 0.999)):
    """(pyconv step maker, torch step maker) of a GAN update as pyconv.train.gan_step does it
    (discriminator on real and generated images, then the generator's non-saturating loss),
    on fixed noise."""
    def make(gan, b, F, Adam, Tensor):
        G, D = gan.generator, gan.discriminator
        lab = b["labels"] if gan.conditional else None
        real, z, n = Tensor(b["real"]), b["z"], len(b["z"])
        ones, zeros = np.ones(n, np.float32), np.zeros(n, np.float32)
        opt_g, opt_d = Adam(G.parameters(), lr=lr, betas=betas), Adam(D.parameters(), lr=lr, betas=betas)
        bce = F.binary_cross_entropy_with_logits

        def step():
            G.requires_grad_(False)
            fake = G(z, lab)
            loss_d = bce(D(real, lab), ones) + bce(D(fake, lab), zeros)
            opt_d.zero_grad()
            loss_d.backward()
            opt_d.step()
            G.requires_grad_(True)
            D.requires_grad_(False)
            loss_g = bce(D(G(z, lab), lab), ones)
            opt_g.zero_grad()
            loss_g.backward()
            opt_g.step()
            D.requires_grad_(True)
            return loss_d.item()
        return step

    def make_torch(gan, b, torch):
        G, D = gan.generator, gan.discriminator
        lab = b["labels"] if G.num_classes else None
        real, z, n = b["real"], b["z"], len(b["z"])
        ones, zeros = torch.ones(n), torch.zeros(n)
        opt_g = torch.optim.Adam(G.parameters(), lr=lr, betas=betas)
        opt_d = torch.optim.Adam(D.parameters(), lr=lr, betas=betas)
        bce = torch.nn.functional.binary_cross_entropy_with_logits

        def step():
            with torch.no_grad():
                fake = G(z, lab)
            loss_d = bce(D(real, lab), ones) + bce(D(fake, lab), zeros)
            opt_d.zero_grad()
            loss_d.backward()
            opt_d.step()
            D.requires_grad_(False)
            loss_g = bce(D(G(z, lab), lab), ones)
            opt_g.zero_grad()
            loss_g.backward()
            opt_g.step()
            D.requires_grad_(True)
            return loss_d.item()
        return step
    return make, make_torch


def _gan_loss(gan, b, F):
    """The discriminator's loss, the first thing a GAN step computes."""
    lab = b["labels"] if gan.conditional else None
    n = len(b["z"])
    bce = F.binary_cross_entropy_with_logits
    return bce(gan.discriminator(b["real"], lab), np.ones(n, np.float32)) + bce(
        gan.discriminator(gan.generator(b["z"], lab), lab), np.zeros(n, np.float32))


def _gan_torch_loss(gan, b, torch):
    lab = b["labels"] if gan.generator.num_classes else None
    n = len(b["z"])
    bce = torch.nn.functional.binary_cross_entropy_with_logits
    return bce(gan.discriminator(b["real"], lab), torch.ones(n)) + bce(
        gan.discriminator(gan.generator(b["z"], lab), lab), torch.zeros(n))


def _vae_torch_loss(twin, b, torch):
    # the twin draws its noise from pyconv's generator, as the model does: reseeded alike,
    # both see the same noise
    eps = pyconv.random.generator().standard_normal((len(b["x"]), twin.latent_dim)).astype(np.float32)
    return twin.loss(b["x"], torch.from_numpy(eps))


_VOCAB = "abcdefghijklmnopqrstuvwxyz .,;'-?!\n"

# name, pyconv model (pyconv.models -> model), batch (rng -> dict of arrays), the pyconv loss
# (model, batch, F) and the twin's (twin, batch of torch tensors, torch), Adam's lr; or, for
# the GAN, step makers of its own.
_ZOO = (
    ("DCGAN 64x1x32x32 (D + G step)", lambda m: m.DCGAN(image_size=32), _dcgan_batch,
     _gan_loss, _gan_torch_loss, _gan_steps()),
    ("conditional DCGAN 64x1x32x32 (D + G step)",
     lambda m: m.DCGAN(image_size=32, conditional=True, num_classes=10), _dcgan_batch,
     _gan_loss, _gan_torch_loss, _gan_steps()),
    ("VAE 64x1x32x32", lambda m: m.VAE(image_size=32),
     lambda rng: {"x": (_images(rng) > 0.5).astype(np.float32)},
     lambda model, b, F: model.loss(b["x"]), _vae_torch_loss, 2e-3),
    ("gated PixelCNN 64x1x32x32", lambda m: m.PixelCNN(image_size=32),
     lambda rng: {"x": (_images(rng) > 0.5).astype(np.float32)},
     lambda model, b, F: model.loss(b["x"]), lambda twin, b, torch: twin.loss(b["x"]), 2e-3),
    ("CharLSTM T=100 B=32", lambda m: m.CharLSTM(_VOCAB, hidden_size=128, num_layers=2),
     lambda rng: {"ids": rng.integers(0, len(_VOCAB), (32, 100)), "y": rng.integers(0, len(_VOCAB), (32, 100))},
     lambda model, b, F: model.loss(b["ids"], b["y"])[0],
     lambda twin, b, torch: twin.loss(b["ids"], b["y"])[0], 3e-3),
    ("char-RNN (tanh cells) T=100 B=32", lambda m: m.CharLSTM(_VOCAB, hidden_size=128, num_layers=2, cell="rnn"),
     lambda rng: {"ids": rng.integers(0, len(_VOCAB), (32, 100)), "y": rng.integers(0, len(_VOCAB), (32, 100))},
     lambda model, b, F: model.loss(b["ids"], b["y"])[0],
     lambda twin, b, torch: twin.loss(b["ids"], b["y"])[0], 3e-3),
    ("SegNet 64x1x32x32 widths 16,32", lambda m: m.SegNet(in_channels=1, num_classes=4, widths=(16, 32)),
     lambda rng: {"x": _images(rng), "masks": rng.integers(0, 4, (64, 32, 32))},
     lambda model, b, F: F.cross_entropy(model(b["x"]), b["masks"]),
     lambda twin, b, torch: torch.nn.functional.cross_entropy(twin(b["x"]), b["masks"]), 3e-3),
    ("MotifCNN 32x4x80", lambda m: m.MotifCNN(num_classes=3, n_filters=16, filter_size=12),
     lambda rng: {"x": np.eye(4, dtype=np.float32)[rng.integers(0, 4, (32, 80))].transpose(0, 2, 1).copy(),
                  "y": rng.integers(0, 3, 32)},
     lambda model, b, F: F.cross_entropy(model(b["x"]), b["y"]),
     lambda twin, b, torch: torch.nn.functional.cross_entropy(twin(b["x"]), b["y"]), 3e-3),
)


def _single_loss_steps(loss, torch_loss, lr):
    def make(model, b, F, Adam, Tensor):
        opt = Adam(model.parameters(), lr=lr)

        def step():
            value = loss(model, b, F)
            opt.zero_grad()
            value.backward()
            opt.step()
            return value.item()
        return step

    def make_torch(twin, b, torch):
        opt = torch.optim.Adam(twin.parameters(), lr=lr)

        def step():
            value = torch_loss(twin, b, torch)
            opt.zero_grad()
            value.backward()
            opt.step()
            return value.item()
        return step
    return make, make_torch


def _zoo_setup(build, batch, rng):
    """(pyconv model, its twin, batch as arrays, batch as torch tensors), the model built from
    pyconv's generator seeded 0."""
    import pyconv.models

    from .twins import twin

    torch = _torch()
    pyconv.manual_seed(0)
    model = build(pyconv.models)
    b = batch(rng)
    return model, twin(model), b, {k: torch.from_numpy(v) for k, v in b.items()}


def _zoo_case(name, build, batch, loss, torch_loss, steps):
    from pyconv import Tensor
    import pyconv.nn.functional as F
    from pyconv.optim import Adam

    make_step, make_torch_step = steps if isinstance(steps, tuple) else _single_loss_steps(loss, torch_loss, steps)

    def make(rng):
        torch = _torch()
        model, tmodel, b, tb = _zoo_setup(build, batch, rng)
        # The twin computes the same thing: the first losses agree to float32 round-off.
        with pyconv.use_backend("cpu" if "cpu" in pyconv.backends() else "reference"):
            pyconv.manual_seed(1)
            ours = loss(model, b, F).item()
        pyconv.manual_seed(1)
        theirs = torch_loss(tmodel, tb, torch).item()
        assert abs(ours - theirs) <= 1e-4 * max(1.0, abs(theirs)), (name, ours, theirs)
        return {"step": make_step(model, b, F, Adam, Tensor), "torch_step": make_torch_step(tmodel, tb, torch)}

    def run(a, be):
        with pyconv.use_backend(be):
            return a["step"]()

    baselines = {"torch": lambda a: a["torch_step"] if _torch() is not None else None}
    return Case("model step", name, (), make, run, baselines=baselines, quick=True)


def _leaf_inputs(tmodel, forward):
    """{module path: (torch leaf module, the arguments of its last call, number of calls)} of
    the twin's leaf modules during ``forward()``, captured with forward hooks."""
    seen, hooks = {}, []

    def keeper(path):
        def hook(module, args, output):
            calls = seen[path][2] + 1 if path in seen else 1
            seen[path] = (module, tuple(a.detach().clone().requires_grad_(a.requires_grad)
                                        if hasattr(a, "detach") else a for a in args), calls)
        return hook
    for path, m in tmodel.named_modules():
        if not list(m.children()) and type(m).__name__ not in ("Flatten", "Dropout"):
            hooks.append(m.register_forward_hook(keeper(path)))
    try:
        forward()
    finally:
        for h in hooks:
            h.remove()
    return seen


def _first(out):
    return out[0] if isinstance(out, tuple) else out


def _zoo_layer_cases(name, build, batch, loss, torch_loss):
    """Forward + backward of every leaf layer of the model on the input it sees in the
    network (captured by running the twin's loss once), pyconv's layer against the twin's."""
    from pyconv import Tensor

    torch = _torch()
    model, tmodel, b, tb = _zoo_setup(build, batch, np.random.default_rng(0))
    pyconv.manual_seed(1)
    seen = _leaf_inputs(tmodel, lambda: torch_loss(tmodel, tb, torch))
    layers = dict(model.named_modules())
    cases = []
    for path, (tlayer, args, calls) in seen.items():
        layer = layers[path]

        def make(rng, layer=layer, tlayer=tlayer, args=args):
            ours = [None if a is None else
                    Tensor(a.detach().numpy().copy(), requires_grad=a.requires_grad) if a.is_floating_point()
                    else a.numpy().copy() for a in args]
            gy = _f32(rng, *_first(tlayer(*args)).shape)
            tgy = torch.from_numpy(gy)

            def step():
                _first(layer(*ours)).backward(gy)

            def torch_step():
                _first(tlayer(*args)).backward(tgy)
            return {"step": step, "torch_step": torch_step}

        def run(a, be):
            with pyconv.use_backend(be):
                return a["step"]()

        shape = "x".join(map(str, args[0].shape))
        per_step = f", {calls} calls per forward" if calls > 1 else ""
        baselines = {"torch": lambda a: a["torch_step"]}
        cases.append(Case("model layer fwd+bwd", f"{name}: {path} {type(layer).__name__} on {shape}{per_step}",
                          (), make, run, baselines=baselines))
    return cases


def model_cases(layers=True) -> list[Case]:
    """A training step of each model of _MODELS; with `layers`, then each of their layers that
    has parameters or pools (forward + backward on the input it sees in the network). Then the
    same for the models of pyconv.models (_ZOO) against their twins, every leaf layer (with
    PyTorch installed: the layers' inputs are captured from the twin)."""
    from pyconv import nn

    out = []
    for name, build, shape, loss in _MODELS:
        out.append(_model_case(name, build, shape, loss))
        if layers:
            pyconv.manual_seed(0)
            model_layers = _leaves(build(nn))
            out += [_layer_case(name, i, model_layers, shape) for i, layer in enumerate(model_layers)
                    if layer._parameters or isinstance(layer, nn.MaxPool2d)]
    for name, build, batch, loss, torch_loss, steps in _ZOO:
        out.append(_zoo_case(name, build, batch, loss, torch_loss, steps))
        if layers and _torch() is not None:
            out += _zoo_layer_cases(name, build, batch, loss, torch_loss)
    return out
