"""The retrieval picture: each query with its top-k neighbours, borders green / red by correctness.

Layout (all sizes in pixels; ``cell = thumb + 2 * border``)::

    gap | query | 3 gaps | neighbour 1 | gap | neighbour 2 | ... | neighbour k | gap

one row per query, rows ``gap`` apart with a ``gap`` margin above and below, so the picture is
``(k + 1) * cell + (k + 4) * gap`` wide and ``Q * cell + (Q + 1) * gap`` high (:func:`grid_size`).
Each image is scaled to fit ``thumb x thumb`` (aspect kept, centred on white) inside a ``border``
frame: :data:`QUERY` blue for the query; for a neighbour :data:`GREEN` where ``correct`` is True
(same class as the query), :data:`RED` where False, :data:`NEUTRAL` grey without labels. A missing
neighbour (``None``; an approximate index found fewer than k) leaves its cell empty.

The trainer can draw a batch's retrievals with it::

    picture = draw_retrieval_grid(images[q], images[nn], labels[nn] == labels[q][:, None],
                                  mean=cfg.data.mean, std=cfg.data.std)   # normalised CHW tensors
    writer.add_image("retrieval", np.asarray(picture), step, dataformats="HWC")

This module needs numpy and Pillow only (a torch tensor is read through ``.detach().cpu().numpy()``).
"""
from __future__ import annotations

from typing import Optional, Sequence, Tuple

import numpy as np
from PIL import Image, ImageDraw

GREEN = (0, 170, 0)
RED = (220, 30, 30)
NEUTRAL = (150, 150, 150)
QUERY = (40, 110, 230)
BACKGROUND = (255, 255, 255)
EMPTY = (235, 235, 235)
#: The space between the query column and the first neighbour, in gaps.
QUERY_GAPS = 3


#: Pixels of one caption line (Pillow's default bitmap font).
CAPTION_LINE = 11


def grid_size(num_queries: int, k: int, thumb: int = 96, border: int = 4, gap: int = 4,
              caption: int = 0) -> Tuple[int, int]:
    """``(width, height)`` of :func:`draw_retrieval_grid`'s picture; ``caption``: the height of the
    text strip under each cell (0 without captions)."""
    cell = thumb + 2 * border
    return (k + 1) * cell + (k + 1 + QUERY_GAPS) * gap, num_queries * (cell + caption) + (num_queries + 1) * gap


def cell_box(row: int, column: int, thumb: int = 96, border: int = 4, gap: int = 4,
             caption: int = 0) -> Tuple[int, int, int, int]:
    """``(left, top, right, bottom)`` (right and bottom exclusive) of the framed cell of query
    ``row``; ``column`` 0 is the query, ``1..k`` its neighbours in rank order. Its caption, if any,
    lies in the ``caption`` pixels below it."""
    cell = thumb + 2 * border
    left = gap if column == 0 else gap + cell + QUERY_GAPS * gap + (column - 1) * (cell + gap)
    top = gap + row * (cell + caption + gap)
    return left, top, left + cell, top + cell


def to_pil(image, mean: Optional[Sequence[float]] = None, std: Optional[Sequence[float]] = None) -> Image.Image:
    """An RGB PIL image from a PIL image, a numpy array (``H x W``, ``H x W x C`` with C in 1, 3, 4,
    or ``C x H x W``) or a torch tensor (``C x H x W``). Floats are read as [0, 1] after undoing
    ``x * std + mean`` when ``mean`` / ``std`` are given (a normalised network input); integers as 0..255."""
    if isinstance(image, Image.Image):
        return image if image.mode == "RGB" else image.convert("RGB")
    if hasattr(image, "detach"):
        image = image.detach().cpu().float().numpy()
    a = np.asarray(image)
    if a.ndim == 3 and a.shape[0] in (1, 3) and a.shape[2] not in (1, 3, 4):
        a = np.moveaxis(a, 0, -1)  # CHW -> HWC
    if a.ndim == 3 and a.shape[2] == 4:
        a = a[..., :3]
    if a.ndim == 3 and a.shape[2] == 1:
        a = a[..., 0]
    if a.ndim not in (2, 3):
        raise ValueError(f"cannot draw an image of shape {a.shape}")
    if a.dtype.kind == "f":
        a = a.astype(np.float64)
        if std is not None:
            a = a * (np.asarray(std, np.float64) if a.ndim == 3 else float(np.mean(std)))
        if mean is not None:
            a = a + (np.asarray(mean, np.float64) if a.ndim == 3 else float(np.mean(mean)))
        a = np.rint(np.clip(a, 0.0, 1.0) * 255.0)
    a = np.clip(a, 0, 255).astype(np.uint8)
    img = Image.fromarray(a)
    return img if img.mode == "RGB" else img.convert("RGB")


def thumbnail(image: Image.Image, thumb: int) -> Image.Image:
    """``image`` scaled to fit ``thumb x thumb`` (aspect ratio kept), centred on white."""
    w, h = image.size
    scale = thumb / max(w, h)
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    small = image.resize(size, Image.BILINEAR)
    canvas = Image.new("RGB", (thumb, thumb), BACKGROUND)
    canvas.paste(small, ((thumb - size[0]) // 2, (thumb - size[1]) // 2))
    return canvas


def draw_retrieval_grid(query_images: Sequence, neighbour_images: Sequence[Sequence], correct=None,
                        thumb: int = 96, border: int = 4, gap: int = 4,
                        mean: Optional[Sequence[float]] = None, std: Optional[Sequence[float]] = None,
                        as_array: bool = False, captions: Optional[Sequence[Sequence[str]]] = None):
    """Draw each query with its neighbours (layout and colours: the module docstring).

    Args:
        query_images: ``Q`` images (PIL, numpy or torch; see :func:`to_pil`).
        neighbour_images: ``Q`` rows of ``k`` images each, in rank order (``None`` = missing).
        correct: optional bool ``[Q, k]``: True = the neighbour's label is the query's (green
            border), False = another label (red); None = labels unknown (grey borders).
        thumb: the side of each thumbnail (default: ``96``).
        border: the width of each frame (default: ``4``).
        gap: the space between cells (default: ``4``).
        mean, std: undo this normalisation of float images first (e.g. ``cfg.data.mean``/``std``).
        as_array: return an ``H x W x 3`` uint8 numpy array (TensorBoard's ``HWC``) instead of a
            PIL image.
        captions: optional ``Q`` rows of ``k + 1`` texts (the query's, then each neighbour's, e.g.
            its rank, cosine and class), drawn under the cells; ``"\n"`` separates lines.

    Returns:
        The picture, :func:`grid_size` big: an RGB ``PIL.Image`` (or numpy array with ``as_array``).
    """
    q = len(query_images)
    if q < 1:
        raise ValueError("draw_retrieval_grid needs at least one query")
    if len(neighbour_images) != q:
        raise ValueError(f"{q} queries but {len(neighbour_images)} rows of neighbours")
    k = len(neighbour_images[0])
    if k < 1 or any(len(row) != k for row in neighbour_images):
        raise ValueError("every query needs the same number k >= 1 of neighbours")
    if thumb < 1 or border < 0 or gap < 0:
        raise ValueError(f"thumb must be >= 1, border and gap >= 0; got {thumb}, {border}, {gap}")
    if correct is not None:
        correct = np.asarray(correct, dtype=np.bool_)
        if correct.shape != (q, k):
            raise ValueError(f"correct must be a [{q}, {k}] bool matrix, got shape {correct.shape}")
    caption = 0
    if captions is not None:
        if len(captions) != q or any(len(row) != k + 1 for row in captions):
            raise ValueError(f"captions must be {q} rows of {k + 1} texts (the query, then its {k} neighbours)")
        caption = CAPTION_LINE * max(str(t).count("\n") + 1 for row in captions for t in row) + 2
    canvas = Image.new("RGB", grid_size(q, k, thumb, border, gap, caption), BACKGROUND)
    draw = ImageDraw.Draw(canvas)

    def put(row: int, column: int, image, colour) -> None:
        left, top, right, bottom = cell_box(row, column, thumb, border, gap, caption)
        if captions is not None:
            draw.multiline_text((left, bottom + 1), str(captions[row][column]), fill=(0, 0, 0), spacing=1)
        if image is None:
            canvas.paste(EMPTY, (left, top, right, bottom))
            return
        canvas.paste(colour, (left, top, right, bottom))
        canvas.paste(thumbnail(to_pil(image, mean, std), thumb), (left + border, top + border))

    for r in range(q):
        put(r, 0, query_images[r], QUERY)
        for j in range(k):
            colour = NEUTRAL if correct is None else (GREEN if correct[r, j] else RED)
            put(r, j + 1, neighbour_images[r][j], colour)
    return np.asarray(canvas) if as_array else canvas
