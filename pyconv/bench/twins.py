"""PyTorch twins of pyconv's models: each model of :mod:`pyconv.models` written again in
torch.nn with the same architecture, parameter names and computation, so that the two can be
compared value for value (tests) and time for time (``pyconv bench --models``).

``twin(model)`` builds the twin of a pyconv model and copies its weights into it, parameter
by parameter under the same name (and batch norm's running statistics), in the model's
dtype. The twins' losses mirror the models' own (``twin.loss`` where the model has ``loss``).

This module needs PyTorch; pyconv imports it only when a twin is wanted.
"""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as TF
from torch import nn as tnn

from .. import models, nn
from ..models.dcgan import Discriminator, Generator

__all__ = ["twin", "torch_layer", "copy_weights"]


class MaskedConv2d(tnn.Conv2d):
    """A Conv2d whose weight is multiplied by a fixed spatial mask in every forward (the
    PixelCNN's masked convolutions, vertical and horizontal alike)."""

    def __init__(self, mask, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.register_buffer("mask", torch.as_tensor(np.array(mask)))

    def forward(self, x):
        return self._conv_forward(x, self.weight * self.mask, self.bias)


def _conv_args(layer):
    return dict(stride=layer.stride, padding=layer.padding, dilation=layer.dilation,
                groups=layer.groups, bias=layer.bias is not None)


def torch_layer(layer):
    """The torch.nn module computing what the pyconv leaf layer `layer` computes, with its
    parameters copied."""
    kind = type(layer).__name__
    if isinstance(layer, nn.ConvTranspose2d):
        t = tnn.ConvTranspose2d(layer.in_channels, layer.out_channels, layer.kernel_size, layer.stride,
                                layer.padding, layer.output_padding, layer.groups, layer.bias is not None,
                                layer.dilation)
    elif isinstance(layer, nn.Conv2d) and hasattr(layer, "mask"):
        t = MaskedConv2d(layer.mask, layer.in_channels, layer.out_channels, layer.kernel_size,
                         **_conv_args(layer))
    elif isinstance(layer, nn.Conv2d):
        t = tnn.Conv2d(layer.in_channels, layer.out_channels, layer.kernel_size, **_conv_args(layer))
    elif isinstance(layer, nn.Conv1d):
        t = tnn.Conv1d(layer.in_channels, layer.out_channels, layer.kernel_size, **_conv_args(layer))
    elif isinstance(layer, nn.Linear):
        t = tnn.Linear(layer.weight.shape[1], layer.weight.shape[0], layer.bias is not None)
    elif isinstance(layer, nn.BatchNorm2d):
        t = tnn.BatchNorm2d(layer.num_features, layer.eps, layer.momentum)
    elif isinstance(layer, nn.Embedding):
        t = tnn.Embedding(layer.num_embeddings, layer.embedding_dim, layer.padding_idx)
    elif isinstance(layer, nn.LSTM):
        t = tnn.LSTM(layer.input_size, layer.hidden_size, layer.num_layers,
                     bias=layer.bias_ih_l0 is not None, batch_first=layer.batch_first)
    elif isinstance(layer, nn.RNNCell):
        t = tnn.RNNCell(layer.input_size, layer.hidden_size, layer.bias_ih is not None,
                        layer.nonlinearity)
    elif isinstance(layer, nn.LeakyReLU):
        t = tnn.LeakyReLU(layer.negative_slope)
    elif isinstance(layer, nn.MaxPool2d):
        t = tnn.MaxPool2d(layer.kernel_size, layer.stride, layer.padding)
    elif kind in ("ReLU", "Tanh", "Sigmoid", "Flatten"):
        t = getattr(tnn, kind)()
    else:
        raise TypeError(f"no PyTorch twin for {kind}")
    return copy_weights(t, layer)


def _convert(module):
    """A pyconv Sequential (nested or not) as a torch Sequential of the same indices, or a
    leaf layer as its torch layer."""
    if type(module) is nn.Sequential:
        return tnn.Sequential(*(_convert(child) for child in module))
    return torch_layer(module)


def copy_weights(twin_module, model):
    """Copies every parameter of the pyconv `model` into the torch module of the same
    structure (same names, same shapes), and batch norm's running statistics; returns the
    torch module, converted to the model's floating-point dtype."""
    params = dict(model.named_parameters())
    dtypes = {p.dtype for p in params.values()}
    if dtypes:
        twin_module.to(getattr(torch, np.dtype(dtypes.pop()).name))
    theirs = dict(twin_module.named_parameters())
    if set(params) != set(theirs):
        raise ValueError(f"twin of {type(model).__name__}: parameter names differ: pyconv only "
                         f"{sorted(set(params) - set(theirs))}, torch only {sorted(set(theirs) - set(params))}")
    buffers = dict(twin_module.named_buffers())
    with torch.no_grad():
        for name, p in params.items():
            theirs[name].copy_(torch.from_numpy(np.array(p.data)))
        for name, b in model.named_buffers():
            if name in buffers and name.rsplit(".", 1)[-1].startswith("running_"):
                buffers[name].copy_(torch.from_numpy(np.array(b)))
    return twin_module


# ---------------------------------------------------------------------------------------------
# The twins, one class per model


class LeNet5(tnn.Module):
    def __init__(self, model):
        super().__init__()
        self.features, self.classifier = _convert(model.features), _convert(model.classifier)

    def forward(self, x):
        return self.classifier(self.features(x))


def _label_maps(embedding, labels, height, width):
    e = embedding(labels)
    return e[:, :, None, None].expand(-1, -1, height, width)


class DCGANGenerator(tnn.Module):
    def __init__(self, model):
        super().__init__()
        self.num_classes = model.num_classes
        if self.num_classes:
            self.embed = torch_layer(model.embed)
        self.net = _convert(model.net)

    def forward(self, z, labels=None):
        if self.num_classes:
            z = torch.cat([z, self.embed(labels)], dim=1)
        return self.net(z[:, :, None, None])


class DCGANDiscriminator(tnn.Module):
    def __init__(self, model):
        super().__init__()
        self.num_classes = model.num_classes
        self.net = _convert(model.net)
        if self.num_classes:
            self.embed, self.joint = torch_layer(model.embed), _convert(model.joint)

    def forward(self, x, labels=None):
        if not self.num_classes:
            return self.net(x).reshape(len(x))
        h = torch.cat([x, _label_maps(self.embed, labels, x.shape[2], x.shape[3])], dim=1)
        h = self.net[:-1](h)
        h = torch.cat([h, _label_maps(self.embed, labels, h.shape[2], h.shape[3])], dim=1)
        return self.net[-1](self.joint(h)).reshape(len(x))


class DCGAN(tnn.Module):
    def __init__(self, model):
        super().__init__()
        self.generator = DCGANGenerator(model.generator)
        self.discriminator = DCGANDiscriminator(model.discriminator)

    def forward(self, z, labels=None):
        return self.generator(z, labels)


class VAE(tnn.Module):
    """The reparameterisation's noise `eps` is an argument (pyconv's model draws it from
    pyconv's generator), so that both can be fed the same."""

    def __init__(self, model):
        super().__init__()
        self.latent_dim, self.likelihood = model.latent_dim, model.likelihood
        self.top_channels = model.top_channels
        self.encoder, self.decoder = _convert(model.encoder), _convert(model.decoder)
        self.to_moments, self.from_latent = torch_layer(model.to_moments), torch_layer(model.from_latent)
        if self.likelihood == "gaussian":
            self.log_sigma = tnn.Parameter(torch.zeros(1))

    def forward(self, x, eps):
        h = self.to_moments(self.encoder(x))
        mu, logvar = h[:, :self.latent_dim], h[:, self.latent_dim:]
        z = mu + torch.exp(logvar * 0.5) * eps
        h = TF.relu(self.from_latent(z)).reshape(len(z), self.top_channels, 4, 4)
        return self.decoder(h), mu, logvar

    def loss(self, x, eps):
        """-ELBO averaged over the batch, nats per image."""
        out, mu, logvar = self(x, eps)
        n, d = len(x), x[0].numel()
        if self.likelihood == "bernoulli":
            log_lik = -TF.binary_cross_entropy_with_logits(out, x, reduction="none").reshape(n, -1).sum(1)
        else:
            sq = ((out - x) ** 2).reshape(n, -1).sum(1)
            log_lik = (-0.5 * sq * torch.exp(-2 * self.log_sigma) - d * self.log_sigma
                       - 0.5 * d * math.log(2 * math.pi))
        kl = -0.5 * (1 + logvar - mu * mu - logvar.exp()).sum(1)
        return -(log_lik - kl).mean()


def _gate(t):
    c = t.shape[1] // 2
    return torch.tanh(t[:, :c]) * torch.sigmoid(t[:, c:])


class GatedLayer(tnn.Module):
    def __init__(self, layer):
        super().__init__()
        self.first, self.num_classes = layer.first, layer.num_classes
        for name in ("vertical", "horizontal", "vertical_to_horizontal", "horizontal_out"):
            setattr(self, name, torch_layer(getattr(layer, name)))
        if self.num_classes:
            self.label_bias = torch_layer(layer.label_bias)

    def forward(self, v, h, labels=None):
        v_feat = self.vertical(v)
        h_feat = self.horizontal(h) + self.vertical_to_horizontal(v_feat)
        if self.num_classes:
            bias = self.label_bias(labels)[:, :, None, None]
            v_feat, h_feat = v_feat + bias, h_feat + bias
        h_out = self.horizontal_out(_gate(h_feat))
        return _gate(v_feat), h_out if self.first else h_out + h


class PixelCNN(tnn.Module):
    def __init__(self, model):
        super().__init__()
        self.levels = model.levels
        self.layers = tnn.Sequential(*(GatedLayer(layer) for layer in model.layers))
        self.head = _convert(model.head)

    def forward(self, x, labels=None):
        v = h = x * 2 - 1
        for layer in self.layers:
            v, h = layer(v, h, labels)
        return self.head(h)

    def loss(self, x, labels=None):
        """Bits per dimension averaged over the batch."""
        logits = self(x, labels)
        if self.levels == 2:
            nll = TF.binary_cross_entropy_with_logits(logits, x, reduction="none")
        else:
            nll = TF.cross_entropy(logits, torch.round(x[:, 0] * 255).long(), reduction="none")
        return (nll.reshape(len(x), -1).sum(1) / (x[0].numel() * math.log(2))).mean()


class CharLSTM(tnn.Module):
    def __init__(self, model):
        super().__init__()
        self.cell = model.cell
        self.embed, self.out = torch_layer(model.embed), torch_layer(model.out)
        if self.cell == "lstm":
            self.rnn = torch_layer(model.rnn)
        else:
            self.cells = _convert(model.cells)

    def forward(self, ids, state=None):
        x = self.embed(ids.T)  # (T, B, E)
        if self.cell == "lstm":
            h, state = self.rnn(x, state)
        else:
            states = list(state) if state is not None else [None] * len(self.cells)
            for k, cell in enumerate(self.cells):
                outputs = []
                for t in range(len(x)):
                    states[k] = cell(x[t], states[k])
                    outputs.append(states[k])
                x = torch.stack(outputs)
            h, state = x, tuple(states)
        return self.out(h).transpose(0, 1), state

    def loss(self, ids, targets, state=None):
        logits, state = self(ids, state)
        return TF.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1)), state


class SegNet(tnn.Module):
    def __init__(self, model):
        super().__init__()
        self.encoders, self.decoders = _convert(model.encoders), _convert(model.decoders)
        self.classifier = torch_layer(model.classifier)

    def forward(self, x):
        remembered = []
        for stage in self.encoders:
            x = stage(x)
            shape = x.shape[2:]
            x, indices = TF.max_pool2d(x, 2, return_indices=True)
            remembered.append((indices, shape))
        for stage, (indices, shape) in zip(self.decoders, reversed(remembered)):
            x = stage(TF.max_unpool2d(x, indices, 2, output_size=shape))
        return self.classifier(x)


class MotifCNN(tnn.Module):
    def __init__(self, model):
        super().__init__()
        self.conv, self.classifier = torch_layer(model.conv), torch_layer(model.classifier)

    def forward(self, x):
        h = TF.relu(self.conv(x))
        return self.classifier(TF.max_pool1d(h, h.shape[2]).squeeze(2))


_TWINS = {models.LeNet5: LeNet5, models.DCGAN: DCGAN, Generator: DCGANGenerator,
          Discriminator: DCGANDiscriminator, models.VAE: VAE, models.PixelCNN: PixelCNN,
          models.CharLSTM: CharLSTM, models.SegNet: SegNet, models.MotifCNN: MotifCNN}


def twin(model) -> tnn.Module:
    """The PyTorch twin of the pyconv model `model` (an instance of a class in
    pyconv.models, or a DCGAN's generator or discriminator) holding its weights, in the same
    training/eval mode."""
    try:
        cls = _TWINS[type(model)]
    except KeyError:
        raise TypeError(f"twin: no PyTorch twin for {type(model).__name__}") from None
    return copy_weights(cls(model), model).train(model.training)
