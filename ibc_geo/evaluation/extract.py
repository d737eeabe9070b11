"""Embeddings of a whole split: the backbone only (``model.embed``), L2-normalised (METHOD.md §2)."""
from __future__ import annotations

import sys
from typing import Tuple, Union

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from ibc_geo.utils.errors import DivergedError
from ibc_geo.utils.runtime import autocast_dtype

__all__ = ["extract_embeddings"]


def extract_embeddings(model: torch.nn.Module, loader, device: Union[str, torch.device],
                       amp_dtype: Union[None, str, torch.dtype] = None,
                       normalize: bool = True) -> Tuple[np.ndarray, np.ndarray]:
    """Run ``model.embed`` over ``loader`` in eval mode without gradients.

    Args:
        model: a module with ``embed(images) -> [B, D]`` (the backbone embedding f_i).
        loader: yields ``(images, labels, indices)``; ``indices`` are dataset indices.
        device: where the images go (the model is expected to be there already).
        amp_dtype: autocast dtype (``"bfloat16"``, ``"float16"`` or a torch dtype); None = off.
        normalize: L2-normalise each embedding (False: the raw backbone features, which the
            test-time MPN refines).

    Returns:
        ``(embeddings float32 [N, D] L2-normalised unless ``normalize`` is False, labels int64 [N])`` in increasing dataset
        index order. The model's train/eval mode is restored afterwards. A NaN or infinite
        embedding (a diverged model) raises :class:`~ibc_geo.utils.errors.DivergedError`.
    """
    device = torch.device(device)
    dtype = autocast_dtype(amp_dtype)
    was_training = model.training
    feats, labs, idxs = [], [], []
    model.eval()
    try:
        with torch.no_grad():
            for images, labels, indices in tqdm(loader, desc="embeddings", unit="batch", leave=False,
                                                disable=not sys.stderr.isatty()):
                images = images.to(device, non_blocking=True)
                with torch.autocast(device_type=device.type, dtype=dtype, enabled=dtype is not None):
                    emb = model.embed(images)
                emb = emb.float()
                feats.append((F.normalize(emb, dim=1) if normalize else emb).cpu())
                labs.append(torch.as_tensor(labels).reshape(-1).cpu())
                idxs.append(torch.as_tensor(indices).reshape(-1).cpu())
    finally:
        model.train(was_training)
    if not feats:
        raise ValueError("the loader yielded no batches")
    emb = torch.cat(feats).numpy().astype(np.float32, copy=False)
    labels = torch.cat(labs).numpy().astype(np.int64)
    indices = torch.cat(idxs).numpy().astype(np.int64)
    if not emb.shape[0] == labels.shape[0] == indices.shape[0]:
        raise ValueError(f"the loader gave {emb.shape[0]} embeddings, {labels.shape[0]} labels "
                         f"and {indices.shape[0]} indices")
    order = np.argsort(indices, kind="stable")
    if np.any(np.diff(indices[order]) == 0):
        raise ValueError("the loader yielded some dataset index twice; evaluation needs each item once")
    bad = ~np.isfinite(emb).all(axis=1)
    if bad.any():
        raise DivergedError(
            f"the embeddings of {int(bad.sum())} of {len(emb)} images are NaN or infinite: the model has "
            f"diverged (its weights or activations overflowed); evaluate an earlier checkpoint, or "
            f"retrain with a lower train.lr")
    return np.ascontiguousarray(emb[order]), labels[order]
