"""Evaluate a model, or a saved checkpoint, on a split: backbone embeddings -> retrieval metrics."""
from __future__ import annotations

from typing import Optional

import torch

from ibc_geo.data import build_dataset, build_eval_loader, build_transforms
from ibc_geo.engine.checkpoint import CheckpointError, config_differences, load_checkpoint, load_model_state
from ibc_geo.evaluation import evaluate_embeddings, extract_embeddings
from ibc_geo.utils.runtime import resolve_device


def amp_dtype(cfg, device: torch.device) -> Optional[torch.dtype]:
    """The autocast dtype when ``train.amp`` is on and the device is CUDA, else ``None``."""
    if cfg.train.amp and device.type == "cuda":
        return getattr(torch, cfg.train.amp_dtype)
    return None


def evaluate_model(cfg, model, dataset, device: torch.device) -> dict:
    """Retrieval metrics of ``model.embed`` (the backbone alone) on ``dataset``."""
    loader = build_eval_loader(cfg, dataset)
    embeddings, labels = extract_embeddings(model, loader, device, amp_dtype=amp_dtype(cfg, device))
    return evaluate_embeddings(
        embeddings, labels, recall_k=tuple(cfg.eval.recall_k), query_mask=dataset.query_mask,
        nmi=cfg.eval.nmi, kmeans_iters=cfg.eval.kmeans_iters, kmeans_redo=cfg.eval.kmeans_redo, seed=cfg.seed,
        chunk_size=cfg.eval.chunk_size,
    )


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
