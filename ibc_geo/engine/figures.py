"""The batch pictures of TensorBoard, made for people: matplotlib figures of one fixed batch.

:func:`batch_figure` draws, side by side, the cosine similarity of the backbone embeddings and of
the MPN output, and each MPN layer's attention, nodes sorted by class with the class boundaries
drawn and the classes as ticks, each panel on a fixed colour scale (the same at every epoch) with
its colour bar, the epoch in the title.
"""
from __future__ import annotations

from typing import List, Optional, Sequence

import torch

from ibc_geo.engine.visualize import class_order


def _boundaries(ax, sorted_labels: Sequence[int], class_names: Optional[Sequence[str]],
                color: str = "black") -> None:
    n = len(sorted_labels)
    starts = [0] + [i for i in range(1, n) if sorted_labels[i] != sorted_labels[i - 1]] + [n]
    for b in starts[1:-1]:
        ax.axhline(b - 0.5, color=color, linewidth=0.8)
        ax.axvline(b - 0.5, color=color, linewidth=0.8)
    centres = [(a + b - 1) / 2 for a, b in zip(starts[:-1], starts[1:])]
    names = [str(class_names[sorted_labels[a]]) if class_names is not None else str(sorted_labels[a])
             for a in starts[:-1]]
    ax.set_xticks(centres, names, rotation=90 if len(names) > 8 else 0, fontsize=7)
    ax.set_yticks(centres, names, fontsize=7)


def batch_figure(labels: torch.Tensor, backbone_similarity: torch.Tensor, mpn_similarity: Optional[torch.Tensor],
                 attention: List[torch.Tensor], epoch: int, split: str = "",
                 class_names: Optional[Sequence[str]] = None):
    """A matplotlib figure of one batch: similarities in [-1, 1] (``RdBu_r``), attention from 0 to
    four times uniform attention (``magma``: uniform sits at a quarter of the bar), nodes sorted by
    class. ``attention`` holds one dense ``(N, N)`` matrix per layer, ``A[i, j]`` = attention of
    node ``i`` on node ``j``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    order = class_order(labels)
    sorted_labels = labels.cpu()[order].tolist()
    n = len(sorted_labels)
    panels = [("backbone: cosine similarity", backbone_similarity, -1.0, 1.0, "RdBu_r")]
    if mpn_similarity is not None:
        panels.append(("MPN output: cosine similarity", mpn_similarity, -1.0, 1.0, "RdBu_r"))
    for layer, dense in enumerate(attention):
        degree = (dense > 0).sum(dim=1).float()
        uniform = float((1.0 / degree[degree > 0]).mean()) if bool((degree > 0).any()) else 1.0
        panels.append((f"attention, layer {layer} (uniform = {uniform:.3f})", dense, 0.0,
                       min(1.0, 4 * uniform), "magma"))
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 4.4), dpi=100, squeeze=False)
    for ax, (title, matrix, low, high, cmap) in zip(axes[0], panels):
        m = matrix.detach().float().cpu()[order][:, order]
        image = ax.imshow(m.numpy(), vmin=low, vmax=high, cmap=cmap, interpolation="nearest")
        ax.set_title(title, fontsize=9)
        _boundaries(ax, sorted_labels, class_names, "white" if cmap == "magma" else "black")
        ax.set_xlabel("node j (sorted by class)", fontsize=8)
        ax.set_ylabel("node i", fontsize=8)
        fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
    where = f" of the {split} split" if split else ""
    fig.suptitle(f"epoch {epoch}: one fixed batch{where}, {n} images of {len(set(sorted_labels))} classes",
                 fontsize=10)
    fig.tight_layout()
    return fig


def figure_to_array(fig) -> "object":
    """An ``(H, W, 3)`` uint8 RGB array of a figure (for tests and PNG export); closes it."""
    import matplotlib.pyplot as plt
    import numpy as np

    fig.canvas.draw()
    rgb = np.asarray(fig.canvas.buffer_rgba())[..., :3].copy()
    plt.close(fig)
    return rgb


__all__ = ["batch_figure", "figure_to_array"]
