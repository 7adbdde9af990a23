"""Feature statistics for neural style transfer: Gram matrices and adaptive instance
normalisation."""
from __future__ import annotations

from ...autograd import Tensor
from ._util import _tensor

__all__ = ["gram_matrix", "adain"]


def gram_matrix(x) -> Tensor:
    """Channel correlations of feature maps (N, C, H, W) -> (N, C, C), F F^T / (C H W) with F
    the (C, H*W) features of each sample (Gatys et al.)."""
    x = _tensor(x)
    if x.ndim != 4:
        raise ValueError(f"gram_matrix: x must be (N, C, H, W), got shape {x.shape}")
    N, C, H, W = x.shape
    f = x.reshape(N, C, H * W)
    return (f @ f.transpose(0, 2, 1)) * (1.0 / (C * H * W))


def adain(content, style, eps=1e-5) -> Tensor:
    """Adaptive instance normalisation (Huang & Belongie 2017): each channel of `content`
    normalised to zero mean and unit variance, then given the mean and standard deviation of
    the same channel of `style`. Both (N, C, H, W); the spatial sizes may differ."""
    content, style = _tensor(content), _tensor(style)
    if content.ndim != 4 or style.ndim != 4 or content.shape[:2] != style.shape[:2]:
        raise ValueError(f"adain: content and style must be (N, C, H, W) with equal N and C, got "
                         f"{content.shape} and {style.shape}")
    axes = (2, 3)
    c_mean, s_mean = content.mean(axes, keepdims=True), style.mean(axes, keepdims=True)
    c_std = (content.var(axes, keepdims=True) + eps) ** 0.5
    s_std = (style.var(axes, keepdims=True) + eps) ** 0.5
    return (content - c_mean) / c_std * s_std + s_mean
