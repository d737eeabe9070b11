"""Embeddings of a run's checkpoint (or of the model as its config initialises it) for a dataset
split, a folder, an image list or a few query images.

Same model and preprocessing as evaluation: :func:`load_embedder` builds the model as
``ibc_geo.engine.evaluator`` does (the checkpoint's config must agree with the given one), images go
through ``build_transforms(cfg, train=False)`` and ``build_eval_loader``, the backbone embedding
(``model.embed``, autocast as ``train.amp`` says on CUDA) is L2-normalised in float32. So
``embed_split(...)`` writes exactly the embeddings that
:func:`~ibc_geo.evaluation.extract_embeddings` gives evaluation.

Refined files (``tools/embed.py --refine dba|mpn``, :func:`embed_split` / :func:`embed_image_files`
with a :class:`~ibc_geo.evaluation.refine.Refinement`): every item searches the others (a split
with a query mask: its queries search the gallery, as evaluation does), each is replaced by its
group's refinement (:func:`refine_gallery`, the evaluation's own
:func:`~ibc_geo.evaluation.refine.refine_embeddings`), and the file also keeps what refines a new
query the same way (the unrefined embeddings; ``mpn``: the raw backbone features and the MPN's
hash). A refinement needs all items at once: memory is ``O(N x D)`` (the unrefined, refined and,
for ``mpn``, raw rows, plus ``N x k`` neighbours), not one chunk as for an unrefined file.
"""
from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import dataclass
from typing import Iterator, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from ibc_geo.retrieval.errors import ImageReadError, RetrievalError
from ibc_geo.retrieval.gallery import EmbeddingWriter, config_hash
from ibc_geo.retrieval.images import ImageFiles, check_image_files, labels_from_folders

#: Rows buffered between writes of an embeddings file (16384 x 512 float32 = 32 MiB).
DEFAULT_CHUNK_SIZE = 16384


def preprocessing(cfg) -> dict:
    """The test-time preprocessing of ``cfg`` in words and numbers (what an exported model needs
    before it): resize the shorter side, centre-crop, RGB in [0, 1], normalise per channel."""
    from ibc_geo.data.transforms import backbone_resize

    size = int(cfg.data.image_size)
    interpolation, resize = backbone_resize(cfg)
    return {
        "resize_shorter_side": resize,
        "interpolation": interpolation,
        "center_crop": size,
        "color": "RGB",
        "scale": "pixel / 255 (values in [0, 1])",
        "mean": [float(v) for v in cfg.data.mean],
        "std": [float(v) for v in cfg.data.std],
        "layout": "NCHW float32",
    }


def model_hash(model: torch.nn.Module, cfg) -> str:
    """16 hex digits of SHA-256 over what determines an image's embedding: the backbone's weights
    (trunk and embedding layer, not its classifier) and the preprocessing. Queries and gallery are
    comparable exactly when their hashes agree."""
    h = hashlib.sha256(json.dumps(preprocessing(cfg), sort_keys=True).encode())
    state = model.backbone.state_dict()
    for key in sorted(state):
        if key.startswith("classifier."):
            continue
        t = state[key].detach().cpu().contiguous()
        h.update(f"{key}:{t.dtype}:{tuple(t.shape)}:".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()[:16]


@dataclass
class Embedder:
    """A loaded model ready to embed, with where it came from."""

    model: torch.nn.Module
    cfg: object
    device: torch.device
    amp_dtype: Optional[torch.dtype]
    checkpoint: str  # "" for --init
    epoch: Optional[int]
    config_hash: str
    model_hash: str

    @property
    def dim(self) -> int:
        return int(self.cfg.model.embedding_dim)

    def meta(self, source: str) -> dict:
        """The string fields of an embeddings file embedded by this model from ``source``."""
        from ibc_geo.config import to_yaml

        return {"config_hash": self.config_hash, "model_hash": self.model_hash, "checkpoint": self.checkpoint,
                "source": source, "config_yaml": to_yaml(self.cfg)}


def load_model(cfg, ckpt: Optional[str] = None, split: str = "test") -> Tuple[torch.nn.Module, Optional[int]]:
    """``(model on the CPU in eval mode, epoch)``: the checkpoint ``ckpt`` as evaluation loads it (a
    checkpoint of another config or architecture is a CheckpointError naming the differing keys;
    ``split`` "val" also asks ``seed`` and ``data.val_classes`` to agree), or with ``ckpt`` None
    the model as ``cfg`` initialises it (seeded), as ``tools/eval.py --init`` does."""
    from ibc_geo.engine.checkpoint import load_checkpoint
    from ibc_geo.engine.evaluator import model_from_checkpoint
    from ibc_geo.modeling import IntraBatchModel
    from ibc_geo.utils.runtime import seed_everything

    if ckpt:
        state = load_checkpoint(ckpt)
        model = model_from_checkpoint(cfg, state, str(ckpt), split)
        epoch = state.get("epoch")
    else:
        seed_everything(cfg.seed)
        model = IntraBatchModel.from_config(cfg, num_classes=2)
        epoch = None
    return model.eval(), epoch


def load_embedder(cfg, ckpt: Optional[str] = None, split: str = "test",
                  device: Optional[str] = None) -> Embedder:
    """:func:`load_model` on ``device`` (default ``cfg.device``) with its hashes."""
    from ibc_geo.engine.evaluator import amp_dtype
    from ibc_geo.utils.runtime import resolve_device

    model, epoch = load_model(cfg, ckpt, split)
    dev = resolve_device(device or cfg.device)
    digest = model_hash(model, cfg)
    model.to(dev)
    return Embedder(model=model, cfg=cfg, device=dev, amp_dtype=amp_dtype(cfg, dev),
                    checkpoint=os.fspath(ckpt) if ckpt else "", epoch=epoch, config_hash=config_hash(cfg),
                    model_hash=digest)


def mpn_hash(mpn: torch.nn.Module) -> str:
    """16 hex digits of SHA-256 over an MPN's weights (an mpn-refined gallery records it: a query is
    refined by the same MPN only when the hashes agree)."""
    h = hashlib.sha256()
    state = mpn.state_dict()
    for key in sorted(state):
        t = state[key].detach().cpu().contiguous()
        h.update(f"{key}:{t.dtype}:{tuple(t.shape)}:".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()[:16]


def _progress_enabled() -> bool:
    from ibc_geo.utils.runtime import progress_enabled

    return progress_enabled()


def iter_embeddings(embedder: Embedder, loader, paths: Sequence[str], desc: str = "embedding",
                    progress: Optional[bool] = None, with_features: bool = False) -> Iterator[Tuple[np.ndarray, ...]]:
    """Yield ``(dataset indices int64 [b], L2-normalised float32 rows [b, D])`` per batch of
    ``loader`` (which yields ``(images, labels, indices[, errors])``); ``with_features`` adds the
    raw backbone features ``[b, D]`` (float32, not normalised: what the test-time MPN refines) as
    a third element. The first unreadable image (an :class:`~ibc_geo.retrieval.images.ImageFiles`
    error) raises :class:`ImageReadError`."""
    model, device, dtype = embedder.model, embedder.device, embedder.amp_dtype
    was_training = model.training
    model.eval()
    bar = tqdm(total=len(paths), desc=desc, unit="img", disable=not (_progress_enabled() if progress is None else progress))
    try:
        with torch.no_grad():
            for batch in loader:
                images, indices = batch[0], torch.as_tensor(batch[2]).reshape(-1)
                if len(batch) > 3:
                    bad = [e for e in batch[3] if e]
                    if bad:
                        raise ImageReadError(bad[0])
                images = images.to(device, non_blocking=True)
                with torch.autocast(device_type=device.type, dtype=dtype, enabled=dtype is not None):
                    emb = model.embed(images)
                rows = F.normalize(emb.float(), dim=1).cpu().numpy().astype(np.float32, copy=False)
                bar.update(len(indices))
                if with_features:
                    feats = emb.float().cpu().numpy().astype(np.float32, copy=False)
                    yield indices.numpy().astype(np.int64), rows, feats
                else:
                    yield indices.numpy().astype(np.int64), rows
    finally:
        bar.close()
        model.train(was_training)


def check_refinement(embedder: Embedder, refinement) -> None:
    """Refuse, before any image is embedded, a refinement the tool cannot write: ``aqe`` (it
    expands queries, the gallery stays as it is) and ``mpn`` with a model that has no MPN."""
    if refinement is None or not refinement.enabled:
        return
    if refinement.method == "aqe":
        raise RetrievalError("--refine aqe expands queries only (query-side), it leaves the gallery as it is: "
                             "embed without --refine and search with tools/search.py --refine aqe")
    if refinement.method not in ("dba", "mpn"):
        raise RetrievalError(f"--refine {refinement.method}: expected dba or mpn")
    if refinement.method == "mpn" and getattr(embedder.model, "mpn", None) is None:
        where = f"checkpoint {embedder.checkpoint}" if embedder.checkpoint else "the initialised model (--init)"
        raise RetrievalError(f"--refine mpn needs a trained MPN, but {where} has none (graph.topology "
                             f"{embedder.cfg.graph.topology}): use --refine dba")


def refine_gallery(unrefined: np.ndarray, refinement, query_mask=None, features: Optional[np.ndarray] = None,
                   run_mpn=None, chunk_size: int = 4096) -> np.ndarray:
    """The refined rows ``[N, D']`` of a whole gallery, as evaluation refines its items: one exact
    search of every item among the others (``query_mask``: queries among the gallery), at least
    ``refinement.search_k`` deep, then :func:`~ibc_geo.evaluation.refine.refine_embeddings`
    (``features`` and ``run_mpn`` for ``mpn``). A group larger than the gallery is a
    :class:`~ibc_geo.evaluation.refine.RefinementError` naming the key and the size."""
    from ibc_geo.evaluation.knn import l2_normalize
    from ibc_geo.evaluation.refine import refine_embeddings
    from ibc_geo.evaluation.retrieval import retrieve_split, split_layout

    _, gallery_items, exclude_self = split_layout(len(unrefined), query_mask)
    refinement.check(len(gallery_items), exclude_self, query_mask)
    retrieval = retrieve_split(l2_normalize(unrefined), refinement.search_k, query_mask=query_mask,
                               chunk_size=chunk_size)
    return refine_embeddings(unrefined, retrieval, refinement, query_mask, features=features, run_mpn=run_mpn,
                             chunk_size=chunk_size)


def _write_refined(embedder: Embedder, loader, paths: Sequence[str], out: str, source: str, chunk_size: int,
                   refinement, labels=None, class_names=None, query_mask=None, overwrite: bool = True) -> dict:
    """Embed all items into memory, refine them (:func:`refine_gallery`), write the refined file."""
    from ibc_geo.evaluation.refine import mpn_refine
    from ibc_geo.retrieval.gallery import write_embeddings

    from ibc_geo.evaluation.retrieval import split_layout

    start = time.perf_counter()
    n, mpn = len(paths), refinement.method == "mpn"
    _, gallery_items, exclude_self = split_layout(n, query_mask)
    refinement.check(len(gallery_items), exclude_self, query_mask)  # a group too large: before any image
    unrefined = np.empty((n, embedder.dim), np.float32)
    features = np.empty((n, embedder.dim), np.float32) if mpn else None
    for batch in iter_embeddings(embedder, loader, paths, with_features=mpn):
        unrefined[batch[0]] = batch[1]
        if mpn:
            features[batch[0]] = batch[2]
    run_mpn = None
    if mpn:
        model, device = embedder.model, embedder.device

        def run_mpn(f, g):
            return mpn_refine(model.mpn, f, g, device, refinement.batch_nodes)
    refined = refine_gallery(unrefined, refinement, query_mask, features, run_mpn,
                             chunk_size=int(embedder.cfg.eval.chunk_size))
    meta = embedder.meta(source)
    meta["refinement"] = json.dumps(refinement.params(), sort_keys=True)
    arrays = {"unrefined_embeddings": unrefined}
    if mpn:
        meta["mpn_hash"] = mpn_hash(embedder.model.mpn)
        arrays["features"] = features
    write_embeddings(out, refined, paths, chunk_size=chunk_size, labels=labels, class_names=class_names,
                     query_mask=query_mask, meta=meta, overwrite=overwrite, arrays=arrays)
    return {"path": os.fspath(out), "num_items": n, "dim": int(refined.shape[1]),
            "num_classes": None if class_names is None else len(class_names),
            "chunks": -(-n // chunk_size), "seconds": time.perf_counter() - start, "source": source,
            "refinement": refinement.params()}


def _write(embedder: Embedder, loader, paths: Sequence[str], out: str, source: str, chunk_size: int,
           labels=None, class_names=None, query_mask=None, overwrite: bool = True, refinement=None) -> dict:
    if refinement is not None and refinement.enabled:
        check_refinement(embedder, refinement)
        return _write_refined(embedder, loader, paths, out, source, chunk_size, refinement, labels=labels,
                              class_names=class_names, query_mask=query_mask, overwrite=overwrite)
    start = time.perf_counter()
    with EmbeddingWriter(out, paths, embedder.dim, labels=labels, class_names=class_names, query_mask=query_mask,
                         meta=embedder.meta(source), chunk_size=chunk_size, overwrite=overwrite) as writer:
        for indices, rows in iter_embeddings(embedder, loader, paths):
            writer.add(indices, rows)
    return {"path": os.fspath(out), "num_items": len(paths), "dim": embedder.dim,
            "num_classes": None if class_names is None else len(class_names), "chunks": writer.chunks_written,
            "seconds": time.perf_counter() - start, "source": source, "refinement": None}


def embed_split(embedder: Embedder, split: str, out: str, chunk_size: int = DEFAULT_CHUNK_SIZE,
                overwrite: bool = True, refinement=None) -> dict:
    """Write the embeddings of ``split`` (train, val or test) of ``embedder.cfg``'s dataset to ``out``,
    with its labels, class names (and query mask); returns a summary dict. ``refinement`` (a
    :class:`~ibc_geo.evaluation.refine.Refinement`, dba or mpn): write the refined file instead."""
    from ibc_geo.data import build_dataset, build_eval_loader, build_transforms

    cfg = embedder.cfg
    dataset = build_dataset(cfg, split, build_transforms(cfg, train=False))
    loader = build_eval_loader(cfg, dataset)
    return _write(embedder, loader, dataset.paths, out, f"split:{split}", chunk_size, labels=dataset.labels,
                  class_names=[str(c) for c in dataset.class_ids], query_mask=dataset.query_mask, overwrite=overwrite,
                  refinement=refinement)


def image_files_loader(cfg, paths: Sequence[str], labels=None):
    """An evaluation loader (``eval.batch_size``, ``data.workers``) over image files."""
    from ibc_geo.data import build_eval_loader, build_transforms

    dataset = ImageFiles(paths, build_transforms(cfg, train=False), cfg.data.image_size, labels)
    return build_eval_loader(cfg, dataset)


def embed_image_files(embedder: Embedder, paths: Sequence[str], out: str, source: str,
                      labels_from_folder_names: bool = False, chunk_size: int = DEFAULT_CHUNK_SIZE,
                      overwrite: bool = True, refinement=None) -> dict:
    """Write the embeddings of image files to ``out`` (labels = parent folder names when asked;
    ``refinement``: the refined file, as :func:`embed_split`)."""
    labels = class_names = None
    if labels_from_folder_names:
        labels, class_names = labels_from_folders(paths)
    loader = image_files_loader(embedder.cfg, paths, labels)
    return _write(embedder, loader, list(paths), out, source, chunk_size, labels=labels, class_names=class_names,
                  overwrite=overwrite, refinement=refinement)


def embed_images(embedder: Embedder, paths: Sequence[str], what: str = "query image", with_features: bool = False):
    """The ``[len(paths), D]`` embeddings of a few image files, in memory (e.g. search queries);
    ``with_features``: the pair ``(embeddings, raw backbone features [len(paths), D])``."""
    check_image_files(paths, what)
    loader = image_files_loader(embedder.cfg, paths)
    out = np.zeros((len(paths), embedder.dim), dtype=np.float32)
    feats = np.zeros((len(paths), embedder.dim), dtype=np.float32)
    for batch in iter_embeddings(embedder, loader, paths, desc="queries", progress=False, with_features=with_features):
        out[batch[0]] = batch[1]
        if with_features:
            feats[batch[0]] = batch[2]
    return (out, feats) if with_features else out
