"""Pictures of models and training runs: image grids (Pillow) and curves and heat maps
(matplotlib, on its file-only Agg backend).

    pictures.save_grid(images, "samples.png", nrow=8)       # images (N, C, H, W) in [0, 1]
    pictures.save_curves(history, "loss.png")               # one panel per logged quantity
    pictures.save_heatmaps(filters, "filters.png", row_labels="ACGT")
"""
from __future__ import annotations

import numpy as np

__all__ = ["image_grid", "save_grid", "save_curves", "save_heatmaps", "overlay_masks"]


def image_grid(images, nrow=8, padding=1, scale=1, pad_value=1.0) -> np.ndarray:
    """Tiles images (N, C, H, W) or (N, H, W), values in [0, 1], into one uint8 array
    (rows, cols) for grey or (rows, cols, 3) for colour, `nrow` images per row, each enlarged
    `scale` times (nearest neighbour, so pixels stay sharp)."""
    images = np.asarray(images, np.float64)
    if images.ndim == 3:
        images = images[:, None]
    if images.ndim != 4 or images.shape[1] not in (1, 3) or len(images) == 0:
        raise ValueError(f"image_grid: expected images (N, 1 or 3, H, W), got shape {images.shape}")
    if scale > 1:
        images = images.repeat(scale, axis=2).repeat(scale, axis=3)
    n, c, h, w = images.shape
    ncol = min(nrow, n)
    nrows = -(-n // ncol)
    grid = np.full((c, padding + nrows * (h + padding), padding + ncol * (w + padding)), pad_value)
    for k in range(n):
        r, q = divmod(k, ncol)
        top, left = padding + r * (h + padding), padding + q * (w + padding)
        grid[:, top:top + h, left:left + w] = images[k]
    grid = (np.clip(grid, 0, 1) * 255 + 0.5).astype(np.uint8)
    return grid[0] if c == 1 else grid.transpose(1, 2, 0)


def save_grid(images, path, nrow=8, padding=1, scale=None, row_labels=None,
              col_labels=None) -> None:
    """Writes :func:`image_grid` of `images` as a PNG. By default small images are enlarged
    so that each is at least 48 pixels wide. `row_labels` (one text per row of the grid) are
    written in a margin on the left, `col_labels` (one per column) in a margin above."""
    from PIL import Image, ImageDraw, ImageFont

    shape = np.shape(images)
    height, width = shape[-2], shape[-1]
    scale = scale or max(1, -(-48 // width))
    grid = Image.fromarray(image_grid(images, nrow, padding, scale))
    if row_labels is None and col_labels is None:
        grid.save(path)
        return
    try:
        font = ImageFont.load_default(size=14)
    except TypeError:  # Pillow before 10.1: only its small bitmap font
        font = ImageFont.load_default()
    draw = ImageDraw.Draw(grid)  # only to measure the texts

    def text_size(text):
        left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
        return right - left, bottom - top

    left = 8 + max((text_size(str(t))[0] for t in row_labels), default=0) if row_labels else 0
    top = 8 + max((text_size(str(t))[1] for t in col_labels), default=0) if col_labels else 0
    white, ink = (255, 0) if grid.mode == "L" else ((255,) * 3, (0,) * 3)
    labelled = Image.new(grid.mode, (grid.width + left, grid.height + top), white)
    labelled.paste(grid, (left, top))
    draw = ImageDraw.Draw(labelled)
    step_y, step_x = height * scale + padding, width * scale + padding
    for r, text in enumerate(row_labels or ()):
        w, h = text_size(str(text))
        draw.text((left - 4 - w, top + padding + r * step_y + (step_y - h) // 2), str(text),
                  fill=ink, font=font, anchor="lt")
    for c, text in enumerate(col_labels or ()):
        w, h = text_size(str(text))
        draw.text((left + padding + c * step_x + (step_x - w) // 2, 2), str(text),
                  fill=ink, font=font, anchor="lt")
    labelled.save(path)


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_curves(history, path, title=None, skip=("epoch", "seconds")) -> None:
    """Plots a training history (a list of per-epoch dicts) as curves against the epoch: one
    panel per quantity (except those in `skip`), the training value and its ``val_``
    counterpart together."""
    plt = _pyplot()
    keys = [k for k in history[0] if k not in skip and not k.startswith("val_")]
    keys += [k[4:] for k in history[0] if k.startswith("val_") and k[4:] not in keys]
    epochs = [h.get("epoch", i + 1) for i, h in enumerate(history)]
    fig, axes = plt.subplots(1, len(keys), figsize=(4 * len(keys), 3.2), squeeze=False)
    for ax, key in zip(axes[0], keys):
        for name, style in ((key, "-o"), ("val_" + key, "--s")):
            values = [h.get(name) for h in history]
            if any(v is not None for v in values):
                ax.plot(epochs, [np.nan if v is None else v for v in values], style, ms=3, label=name)
        ax.set_xlabel("epoch")
        ax.set_title(key)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def save_heatmaps(maps, path, titles=None, row_labels=None, ncols=4, cmap="RdBu_r",
                  symmetric=True) -> None:
    """Draws 2-D arrays `maps` (K, rows, cols) as heat maps with a colour bar each: learned
    filters (symmetric colour scale around 0) or saliency maps (``symmetric=False``)."""
    plt = _pyplot()
    maps = np.asarray(maps, np.float64)
    k = len(maps)
    ncols = min(ncols, k)
    nrows = -(-k // ncols)
    aspect = maps.shape[2] / maps.shape[1]
    fig, axes = plt.subplots(nrows, ncols, figsize=(ncols * min(6, 1.2 + 2.2 * aspect), nrows * 2.4),
                             squeeze=False)
    for i, ax in enumerate(axes.flat):
        if i >= k:
            ax.axis("off")
            continue
        m = maps[i]
        if symmetric:
            v = np.abs(m).max() or 1
            im = ax.imshow(m, cmap=cmap, vmin=-v, vmax=v, aspect="auto")
        else:
            im = ax.imshow(m, cmap=cmap, aspect="auto")
        if row_labels is not None:
            ax.set_yticks(range(len(row_labels)), list(row_labels))
        else:
            ax.set_yticks([])
        if titles is not None:
            ax.set_title(titles[i], fontsize=9)
        fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


_PALETTE = np.array([[0, 0, 0], [230, 60, 60], [60, 170, 60], [60, 90, 230], [230, 200, 40],
                     [180, 60, 200], [40, 200, 200]], np.float64) / 255


def overlay_masks(images, masks, alpha=0.5) -> np.ndarray:
    """Colours the grey images (N, 1, H, W) by the class masks (N, H, W) (class 0, the
    background, stays grey) -> (N, 3, H, W) in [0, 1], for a segmentation picture."""
    images = np.asarray(images, np.float64)[:, 0]
    colours = _PALETTE[np.asarray(masks) % len(_PALETTE)]  # (N, H, W, 3)
    grey = np.repeat(images[..., None], 3, axis=-1)
    fg = (np.asarray(masks) > 0)[..., None]
    out = np.where(fg, (1 - alpha) * grey + alpha * colours, grey)
    return out.transpose(0, 3, 1, 2)
