"""Evaluate a model, or a saved checkpoint, on a split: backbone embeddings -> retrieval metrics."""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch

from ibc_geo.data import build_dataset, build_eval_loader, build_transforms
from ibc_geo.engine.checkpoint import CheckpointError, config_differences, load_checkpoint, load_model_state
from ibc_geo.evaluation import evaluate_embeddings, extract_embeddings, l2_normalize
from ibc_geo.evaluation.refine import Refinement, RefinementError, evaluate_refined, mpn_refine, refinement_groups
from ibc_geo.evaluation.retrieval import RetrievalResult
from ibc_geo.utils.distributed import broadcast_object, gather_objects
from ibc_geo.utils.runtime import autocast_dtype, distributed_rank, resolve_device


def amp_dtype(cfg, device: torch.device) -> Optional[torch.dtype]:
    """The autocast dtype when ``train.amp`` is on and the device is CUDA, else ``None``."""
    if cfg.train.amp and device.type == "cuda":
        return autocast_dtype(cfg.train.amp_dtype)
    return None


@dataclass
class Evaluation:
    """One evaluation of a split: the headline (backbone-only) metrics, the retrieval result they
    were computed from, and the refined metrics beside them when ``eval.refine`` asks.

    ``retrieval``, ``labels`` and ``items`` live on rank 0 only (``None`` elsewhere); ``metrics``
    and ``refined`` are the same on every rank.
    """

    metrics: dict
    retrieval: Optional[RetrievalResult] = None
    labels: Optional[np.ndarray] = None  # label of each evaluated item (retrieval's item order)
    items: Optional[np.ndarray] = None  # dataset index of each evaluated item (dropped images left out)
    refined: Optional[dict] = None  # {"refinement": params, "metrics": {...}, "seconds": float}


def evaluate_model(cfg, model, dataset, device: torch.device) -> dict:
    """Retrieval metrics of ``model.embed`` (the backbone alone) on ``dataset``
    (:func:`run_evaluation`'s ``metrics``)."""
    return run_evaluation(cfg, model, dataset, device).metrics


def run_evaluation(cfg, model, dataset, device: torch.device, refine: bool = False,
                   keep_k: int = 0) -> Evaluation:
    """Retrieval metrics of ``model.embed`` (the backbone alone) on ``dataset`` from one exact
    search, kept as the :class:`Evaluation`'s ``retrieval`` (at least ``keep_k`` neighbours deep);
    with ``refine`` and ``eval.refine`` set, also the metrics of the refined embeddings
    (:mod:`ibc_geo.evaluation.refine`; labels are never read by the refinement).

    No image is ever substituted: an unreadable one stops the evaluation naming it
    (``eval.on_corrupt error``), or (``drop``) is left out of the embeddings before any metric,
    its path in ``dropped_images`` and the count in ``num_dropped``.

    Under ``torch.distributed`` each rank embeds the disjoint shard ``r, r + N, ...`` (no padding
    duplicates); the shards are gathered back into dataset order, rank 0 computes the metrics and
    every rank returns them, so the selection decision is the same everywhere and the metrics equal
    the single-process ones. The test-time MPN refines its groups sharded the same way."""
    rank, world = distributed_rank()
    refinement = Refinement.from_config(cfg) if refine else Refinement()
    if refinement.method == "mpn" and getattr(model, "mpn", None) is None:
        raise RefinementError("eval.refine mpn needs a model with an MPN; this one has none "
                              f"(graph.topology {cfg.graph.topology}): use eval.refine dba or aqe")
    shard = np.arange(rank, len(dataset), world)
    source = dataset if world == 1 else torch.utils.data.Subset(dataset, shard.tolist())
    loader = build_eval_loader(cfg, source)
    # the MPN refines the backbone features it was trained on, not their normalised copies
    raw = refinement.method == "mpn"
    embeddings, labels = extract_embeddings(model, loader, device, amp_dtype=amp_dtype(cfg, device), normalize=not raw)
    dropped = dataset.skipped_indices()
    if world > 1:
        parts = gather_objects((embeddings, labels, dropped))
        embeddings = np.empty((len(dataset), embeddings.shape[1]), dtype=embeddings.dtype)
        labels = np.empty(len(dataset), dtype=np.int64)
        for r, (emb_r, lab_r, _) in enumerate(parts):
            embeddings[r::world], labels[r::world] = emb_r, lab_r
        dropped = sorted({i for _, _, d in parts for i in d})
    out = Evaluation(metrics={})
    keep = max(int(keep_k), refinement.search_k if refinement.enabled else 0)
    if rank == 0:
        items = np.arange(len(labels))
        query_mask = dataset.query_mask
        if dropped:
            keep_rows = np.ones(len(labels), dtype=bool)
            keep_rows[dropped] = False
            items, embeddings, labels = items[keep_rows], embeddings[keep_rows], labels[keep_rows]
            query_mask = None if query_mask is None else query_mask[keep_rows]
        metrics, retrieval = evaluate_embeddings(
            embeddings, labels, min_k=keep, return_retrieval=True, query_mask=query_mask, **_metric_options(cfg))
        if dropped:
            metrics["num_dropped"] = len(dropped)
            metrics["dropped_images"] = [dataset.paths[i] for i in dropped]
        out = Evaluation(metrics, retrieval, labels, items)
    if refinement.enabled:
        out.refined = _refine(cfg, model, refinement, out, embeddings if rank == 0 else None,
                              query_mask if rank == 0 else None, device)
    out.metrics = broadcast_object(out.metrics)
    return out


def _metric_options(cfg) -> dict:
    return dict(recall_k=tuple(cfg.eval.recall_k), nmi=cfg.eval.nmi, kmeans_iters=cfg.eval.kmeans_iters,
                kmeans_redo=cfg.eval.kmeans_redo, seed=cfg.seed, chunk_size=cfg.eval.chunk_size)


def _refine(cfg, model, refinement: Refinement, evaluation: Evaluation, features, query_mask, device) -> dict:
    """The refined metrics (on every rank): rank 0 groups, refines and evaluates; the test-time MPN
    runs the groups sharded over the ranks. ``seconds``: the refinement's time without the new search."""
    rank, world = distributed_rank()
    rows, mpn_seconds = None, 0.0
    if refinement.method == "mpn":
        start = time.perf_counter()
        groups = None
        if rank == 0:
            refinement.check(evaluation.retrieval.num_database, evaluation.retrieval.exclude_self, query_mask)
            groups = refinement_groups(l2_normalize(features), evaluation.retrieval, refinement, query_mask,
                                       cfg.eval.chunk_size)[1]
        features_all, groups = broadcast_object((features, groups)) if world > 1 else (features, groups)
        rows = mpn_refine(model.mpn, features_all, groups[rank::world], device, refinement.batch_nodes)
        if world > 1:
            parts = gather_objects(rows)
            rows = np.empty((len(groups), parts[0].shape[1]), np.float32)
            for r, part in enumerate(parts):
                rows[r::world] = part
        mpn_seconds = time.perf_counter() - start
    record = None
    if rank == 0:
        record = evaluate_refined(features, evaluation.labels, evaluation.retrieval, refinement, query_mask,
                                  run_mpn=None if rows is None else (lambda f, g: rows), **_metric_options(cfg))
        record["seconds"] += mpn_seconds
    return broadcast_object(record)


def model_from_checkpoint(cfg, state: dict, source: str, split: str = "test"):
    """Build the configured model with the checkpoint's class count and load its weights."""
    from ibc_geo.modeling import IntraBatchModel

    saved_cfg = state.get("config")
    if saved_cfg is not None:
        from ibc_geo.config import config_to_dict

        diff = config_differences(saved_cfg, config_to_dict(cfg), ignore=_ignored_for_eval(split))
        if diff:
            raise CheckpointError(f"checkpoint {source} was trained with another config: " + "; ".join(diff))
    weights = state["model"]
    if "backbone.classifier.weight" not in weights:
        raise CheckpointError(f"checkpoint {source} holds no ibc_geo model (no backbone.classifier.weight)")
    num_classes = weights["backbone.classifier.weight"].shape[0]
    model = IntraBatchModel.from_config(cfg, num_classes, pretrained="none")
    load_model_state(model, weights, source)
    return model


def _ignored_for_eval(split: str) -> tuple:
    """Evaluation needs the architecture to agree; training-only keys may differ, except that the
    validation split is drawn from ``seed`` and ``data.val_classes``, which must then agree too."""
    from ibc_geo.engine.checkpoint import RUNTIME_KEYS

    training_only = ("deterministic", "train.", "loss.", "sampler.", "eval.", "data.random_erasing",
                     "data.crop_scale", "data.hflip", "data.on_corrupt", "model.pretrained", "model.channels_last",
                     "graph.k", "graph.threshold", "graph.similarity", "mpn.dropout", "mpn.attention_path")
    split_keys = () if split == "val" else ("seed", "data.val_classes")
    return RUNTIME_KEYS + training_only + split_keys


def _with_refined(evaluation: Evaluation) -> dict:
    """The headline metrics, with the refined ones under ``refined`` when there are any."""
    metrics = dict(evaluation.metrics)
    if evaluation.refined is not None:
        metrics["refined"] = evaluation.refined
    return metrics


def evaluate_initial_model(cfg, split: str = "test", refine: bool = False) -> dict:
    """Metrics of the model as ``cfg`` initialises it, before any training: ImageNet weights
    (``model.pretrained imagenet``, the usual DML baseline) or the seeded random init of a run.

    The backbone embedding does not depend on the class count, so no training set is read.
    """
    from ibc_geo.modeling import IntraBatchModel
    from ibc_geo.utils.runtime import seed_everything

    seed_everything(cfg.seed)
    device = resolve_device(cfg.device)
    model = IntraBatchModel.from_config(cfg, num_classes=2).to(device)
    dataset = build_dataset(cfg, split, build_transforms(cfg, train=False))
    metrics = _with_refined(run_evaluation(cfg, model, dataset, device, refine=refine))
    metrics.update(dataset=cfg.data.name, split=split, checkpoint=None, epoch=0)
    return metrics


def evaluate_checkpoint(cfg, ckpt_path: str, split: str = "test", refine: bool = False) -> dict:
    """Metrics of the checkpoint at ``ckpt_path`` on ``split`` (``test`` or ``val``), config ``cfg``;
    with ``refine``, the ``eval.refine`` metrics under ``refined``."""
    state = load_checkpoint(ckpt_path)
    model = model_from_checkpoint(cfg, state, ckpt_path, split)
    if refine and cfg.eval.refine == "mpn" and model.mpn is None:
        raise CheckpointError(f"eval.refine mpn needs a trained MPN, but checkpoint {ckpt_path} has none "
                              f"(graph.topology {cfg.graph.topology}): use eval.refine dba or aqe")
    device = resolve_device(cfg.device)
    model.to(device)
    dataset = build_dataset(cfg, split, build_transforms(cfg, train=False))
    metrics = _with_refined(run_evaluation(cfg, model, dataset, device, refine=refine))
    metrics.update(dataset=cfg.data.name, split=split, checkpoint=str(ckpt_path), epoch=state.get("epoch"))
    return metrics
