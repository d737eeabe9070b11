"""Evaluate a model, or a saved checkpoint, on a split: backbone embeddings -> retrieval metrics."""
from __future__ import annotations

from typing import Optional

import numpy as np
import torch

from ibc_geo.data import build_dataset, build_eval_loader, build_transforms
from ibc_geo.engine.checkpoint import CheckpointError, config_differences, load_checkpoint, load_model_state
from ibc_geo.evaluation import evaluate_embeddings, extract_embeddings
from ibc_geo.utils.distributed import broadcast_object, gather_objects
from ibc_geo.utils.runtime import autocast_dtype, distributed_rank, resolve_device


def amp_dtype(cfg, device: torch.device) -> Optional[torch.dtype]:
    """The autocast dtype when ``train.amp`` is on and the device is CUDA, else ``None``."""
    if cfg.train.amp and device.type == "cuda":
        return autocast_dtype(cfg.train.amp_dtype)
    return None


def evaluate_model(cfg, model, dataset, device: torch.device) -> dict:
    """Retrieval metrics of ``model.embed`` (the backbone alone) on ``dataset``.

    No image is ever substituted: an unreadable one stops the evaluation naming it
    (``eval.on_corrupt error``), or (``drop``) is left out of the embeddings before any metric,
    its path in ``dropped_images`` and the count in ``num_dropped``.

    Under ``torch.distributed`` each rank embeds the disjoint shard ``r, r + N, ...`` (no padding
    duplicates); the shards are gathered back into dataset order, rank 0 computes the metrics and
    every rank returns them, so the selection decision is the same everywhere and the metrics equal
    the single-process ones."""
    rank, world = distributed_rank()
    shard = np.arange(rank, len(dataset), world)
    source = dataset if world == 1 else torch.utils.data.Subset(dataset, shard.tolist())
    loader = build_eval_loader(cfg, source)
    embeddings, labels = extract_embeddings(model, loader, device, amp_dtype=amp_dtype(cfg, device))
    dropped = dataset.skipped_indices()
    if world > 1:
        parts = gather_objects((embeddings, labels, dropped))
        embeddings = np.empty((len(dataset), embeddings.shape[1]), dtype=embeddings.dtype)
        labels = np.empty(len(dataset), dtype=np.int64)
        for r, (emb_r, lab_r, _) in enumerate(parts):
            embeddings[r::world], labels[r::world] = emb_r, lab_r
        dropped = sorted({i for _, _, d in parts for i in d})
    metrics = None
    if rank == 0:
        metrics = _metrics(cfg, dataset, embeddings, labels, dropped)
    return broadcast_object(metrics)


def _metrics(cfg, dataset, embeddings, labels, dropped) -> dict:
    query_mask = dataset.query_mask
    if dropped:
        keep = np.ones(len(labels), dtype=bool)
        keep[dropped] = False
        embeddings, labels = embeddings[keep], labels[keep]
        query_mask = None if query_mask is None else query_mask[keep]
    metrics = evaluate_embeddings(
        embeddings, labels, recall_k=tuple(cfg.eval.recall_k), query_mask=query_mask,
        nmi=cfg.eval.nmi, kmeans_iters=cfg.eval.kmeans_iters, kmeans_redo=cfg.eval.kmeans_redo, seed=cfg.seed,
        chunk_size=cfg.eval.chunk_size,
    )
    if dropped:
        metrics["num_dropped"] = len(dropped)
        metrics["dropped_images"] = [dataset.paths[i] for i in dropped]
    return metrics


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


def evaluate_initial_model(cfg, split: str = "test") -> dict:
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
    metrics = evaluate_model(cfg, model, dataset, device)
    metrics.update(dataset=cfg.data.name, split=split, checkpoint=None, epoch=0)
    return metrics


def evaluate_checkpoint(cfg, ckpt_path: str, split: str = "test") -> dict:
    """Metrics of the checkpoint at ``ckpt_path`` on ``split`` (``test`` or ``val``), config ``cfg``."""
    state = load_checkpoint(ckpt_path)
    model = model_from_checkpoint(cfg, state, ckpt_path, split)
    device = resolve_device(cfg.device)
    model.to(device)
    dataset = build_dataset(cfg, split, build_transforms(cfg, train=False))
    metrics = evaluate_model(cfg, model, dataset, device)
    metrics.update(dataset=cfg.data.name, split=split, checkpoint=str(ckpt_path), epoch=state.get("epoch"))
    return metrics
