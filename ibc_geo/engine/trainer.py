"""End-to-end training (METHOD.md §1): the loop, model selection, LR drops, checkpoints, logs.

Outputs in ``output_dir``: ``config.yaml`` (``--cfg`` of it reproduces the run),
``checkpoints/last.pt`` and ``best.pt`` (written atomically), TensorBoard events, ``log.txt``
(one line per epoch) and, at the end, ``metrics.json``.
"""
from __future__ import annotations

import itertools
import logging
import math
import os
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Optional

import torch
from omegaconf import OmegaConf
from tqdm import tqdm

from ibc_geo.config import config_to_dict, save_config
from ibc_geo.data import build_dataset, build_train_loader, build_transforms
from ibc_geo.engine import visualize
from ibc_geo.engine.checkpoint import (
    RUNTIME_KEYS,
    CheckpointError,
    config_differences,
    load_checkpoint,
    load_model_state,
    save_checkpoint,
)
from ibc_geo.engine.evaluator import amp_dtype, evaluate_model
from ibc_geo.engine.writers import RunWriters
from ibc_geo.evaluation import is_fraction_metric
from ibc_geo.modeling import IntraBatchLoss, IntraBatchModel
from ibc_geo.nn.analysis import attention_entropy, same_class_attention_share
from ibc_geo.utils.errors import DivergedError, UserError
from ibc_geo.utils.run_dir import RunDir
from ibc_geo.utils.runtime import progress_enabled, resolve_device, rng_state, seed_everything, set_rng_state

logger = logging.getLogger("ibc_geo")


class RunExistsError(UserError, RuntimeError):
    """``output_dir`` already holds a run and neither ``train.resume`` nor ``train.overwrite`` is set."""


class NonFiniteLossError(DivergedError, RuntimeError):
    """A loss term, a weight or an optimizer state became NaN or infinite; the run stops, and no
    checkpoint is written from that state (``last.pt`` of the last good epoch stays as it was)."""


def train(cfg) -> dict:
    """Train the configured model in ``cfg.output_dir``; returns what it writes to ``metrics.json``."""
    return Trainer(cfg).fit()


class Trainer:
    """Owns the model, optimizer, data, writers and checkpoints of one run."""

    def __init__(self, cfg):
        self.cfg = cfg
        self.run_dir = RunDir(cfg.output_dir)
        self.out = self.run_dir.root
        self.ckpt_dir = self.run_dir.checkpoints
        self.device = resolve_device(cfg.device)
        self.amp_dtype = amp_dtype(cfg, self.device)
        if cfg.train.amp and self.device.type != "cuda":
            logger.warning("train.amp is on but the device is %s: training in float32", self.device)
        self.epoch = 0  # last finished epoch
        self.drops = 0  # learning-rate drops done
        self.best: Optional[dict] = None  # {"epoch", "value", "metrics"}
        self.history: list[dict] = []
        self.train_time = 0.0
        self._selection_dataset = None
        self._last_batch = None
        self._train_loader = None  # (DataLoader, PKSampler), built at the first epoch
        self.writers = RunWriters(self.run_dir)  # rank 0 writes, the other ranks do not
        self._last_saved_epoch: Optional[int] = None  # epoch of the last.pt this run wrote or resumed

    # ----------------------------------------------------------------------------------- set-up
    def _prepare_output_dir(self) -> Optional[dict]:
        """The state to resume from, or ``None`` to start afresh in a folder holding no run.

        Never deletes what the trainer did not write: a folder with run files but no ``last.pt`` is
        refused (naming the files and the flags) unless ``train.overwrite true``, which deletes
        exactly those files (:meth:`~ibc_geo.utils.run_dir.RunDir.remove_run_files`).
        """
        cfg, last = self.cfg, self.run_dir.last
        if cfg.train.resume and last.exists():
            state = load_checkpoint(last)
            diff = config_differences(state["config"], config_to_dict(cfg), RUNTIME_KEYS)
            if diff:
                raise CheckpointError(f"cannot resume {last}: it was trained with another config: " + "; ".join(diff))
            return state
        found = self.run_dir.run_files()
        if found and not cfg.train.overwrite:
            names = ", ".join(str(p.relative_to(self.out)) for p in found[:8]) + (" ..." if len(found) > 8 else "")
            if cfg.train.resume:
                what = ("a finished run (metrics.json) with no checkpoints/last.pt to continue"
                        if self.run_dir.is_finished() else "run files but no checkpoints/last.pt to resume from")
                raise RunExistsError(
                    f"train.resume true, but output_dir {self.out} holds {what} ({names}); pass "
                    f"`train.overwrite true` to delete those files and start afresh, or choose another output_dir")
            raise RunExistsError(
                f"output_dir {self.out} already holds a run ({names}); pass `train.resume true` to continue "
                f"it (needs checkpoints/last.pt), `train.overwrite true` to delete those files and start "
                f"afresh, or choose another output_dir")
        if cfg.train.resume:
            logger.info("train.resume: %s holds no run yet, starting afresh", self.out)
        # Starting afresh: nothing of an earlier run may leak in (a stale best.pt would be reloaded
        # by an LR drop before the first evaluation); files the trainer did not write stay.
        if found and self.writers.enabled:
            self.run_dir.remove_run_files()
            logger.info("train.overwrite: deleted %d files of the earlier run in %s", len(found), self.out)
        return None

    def _build(self, resume: Optional[dict]) -> None:
        cfg = self.cfg
        self.train_set = build_dataset(cfg, "train", build_transforms(cfg, train=True))
        self.model = IntraBatchModel.from_config(
            cfg, self.train_set.num_classes, pretrained="none" if resume else None).to(self.device)
        self.loss_fn = IntraBatchLoss.from_config(cfg)
        # The official RAdam decays the weights decoupled from the gradient: p -= lr * wd * p.
        self.optimizer = torch.optim.RAdam(self.model.parameters(), lr=cfg.train.lr,
                                           weight_decay=cfg.train.weight_decay, decoupled_weight_decay=True)
        use_scaler = self.amp_dtype == torch.float16
        self.scaler = torch.amp.GradScaler("cuda", enabled=use_scaler)

    def _restore(self, state: dict) -> None:
        load_model_state(self.model, state["model"], str(self.run_dir.last))
        self.optimizer.load_state_dict(state["optimizer"])
        if state["scaler"] and self.scaler.is_enabled():  # empty when the run began without a scaler
            self.scaler.load_state_dict(state["scaler"])
        self.model.topology.load_state_dict(state["topology"])
        self.epoch, self.drops, self.best = state["epoch"], state["drops"], state["best"]
        self.history, self.train_time = state["history"], state["train_time"]
        self._last_saved_epoch = self.epoch
        set_rng_state(state["rng"])
        logger.info("resumed from epoch %d", self.epoch)

    # ------------------------------------------------------------------------------ checkpoints
    def _state(self) -> dict:
        return {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict(),
            "topology": self.model.topology.state_dict(),
            "epoch": self.epoch,
            "drops": self.drops,
            "best": self.best,
            "history": self.history,
            "train_time": self.train_time,
            "rng": rng_state(),
            "config": config_to_dict(self.cfg),
        }

    def _save(self, path: Path) -> None:
        """A checkpoint of the current state, atomically, by the main process only; never of a
        non-finite state (a good checkpoint is never replaced by a diverged one)."""
        self._check_finite(f"{path.name} was not written")
        if self.writers.enabled:
            save_checkpoint(self._state(), path)
            if path == self.run_dir.last:
                self._last_saved_epoch = self.epoch

    def _check_finite(self, consequence: str) -> None:
        """Stop with :class:`NonFiniteLossError` when a weight or optimizer state is NaN or inf."""
        bad = self._non_finite_tensors()
        if bad:
            raise NonFiniteLossError(
                f"{len(bad)} tensors of the model and optimizer hold NaN or infinite values after epoch "
                f"{self.epoch} (e.g. {', '.join(bad[:3])}): the run diverged; {consequence}. {self._kept()}")

    def _non_finite_tensors(self) -> list:
        """Names of the floating-point parameters, buffers and optimizer states with a NaN or inf."""
        bad = [name for name, t in self.model.state_dict().items()
               if t.is_floating_point() and not bool(torch.isfinite(t).all())]
        for index, state in self.optimizer.state.items():
            bad += [f"optimizer.{name}" for name, t in state.items()
                    if torch.is_tensor(t) and t.is_floating_point() and not bool(torch.isfinite(t).all())]
        return bad

    def _kept(self) -> str:
        """What survives a divergence, truthfully."""
        if self._last_saved_epoch is None:
            return "no checkpoint was written yet (it stopped before its first epoch ended)"
        return (f"{self.run_dir.last} (epoch {self._last_saved_epoch}) is kept intact, checked finite when "
                f"written: resume from it with a lower train.lr, or change the config")

    def _drop_learning_rate(self) -> None:
        """The official schedule (``trainer.py``, epochs 31 and 51): reload the best *weights* so far
        (the optimizer state is kept), then set ``lr = train.lr * lr_drop_factor`` at every drop,
        so the LR stays base/10 after the second drop; ``train.lr_drop_cumulative`` multiplies the
        factors instead (base/100 after two drops)."""
        best = self.run_dir.best
        if best.exists():
            state = load_checkpoint(best)
            load_model_state(self.model, state["model"], str(best))
            logger.info("epoch %d: reloaded the weights of the best checkpoint (epoch %d)",
                        self.epoch + 1, state["epoch"])
        self.drops += 1
        train = self.cfg.train
        lr = train.lr * train.lr_drop_factor ** (self.drops if train.lr_drop_cumulative else 1)
        for group in self.optimizer.param_groups:
            group["lr"] = lr

    # ---------------------------------------------------------------------------------- training
    def _train_epoch(self, epoch: int, writer: RunWriters) -> dict:
        cfg, model = self.cfg, self.model
        model.train()
        # One loader for the run, its workers persistent; every sample is augmented on a seed drawn
        # from (seed, epoch), so a resumed run sees the same images as an uninterrupted one.
        if self._train_loader is None:
            self._train_loader = build_train_loader(cfg, self.train_set, epoch)
        loader, sampler = self._train_loader
        sampler.set_epoch(epoch)
        iters = len(sampler) if cfg.train.iters_per_epoch <= 0 else min(cfg.train.iters_per_epoch, len(sampler))
        sums: dict = {}
        autocast = (torch.autocast("cuda", dtype=self.amp_dtype) if self.amp_dtype is not None else nullcontext())
        bar = tqdm(total=iters, desc=f"epoch {epoch}/{cfg.train.epochs}", leave=False,
                   disable=not progress_enabled())
        for it, (images, labels, _) in enumerate(itertools.islice(loader, iters)):
            images = images.to(self.device, non_blocking=True)
            labels = labels.to(self.device, non_blocking=True)
            with autocast:
                out = model(images, labels)
            terms = self.loss_fn(labels, out.backbone_logits, out.mpn_logits)
            values = {name: float(t.detach()) for name, t in terms.items()}
            for name, value in values.items():
                if not math.isfinite(value):
                    raise NonFiniteLossError(
                        f"loss term {name!r} is {value} at epoch {epoch}, iteration {it + 1}; stopping. "
                        f"{self._kept()}")
            self.optimizer.zero_grad(set_to_none=True)
            self.scaler.scale(terms["total"]).backward()
            self.scaler.step(self.optimizer)
            self.scaler.update()
            for name, value in values.items():
                sums[name] = sums.get(name, 0.0) + value
            step = (epoch - 1) * iters + it
            if it % cfg.train.log_every == 0:
                for name, value in values.items():
                    writer.scalar(f"loss/{name}", value, step)
                writer.scalar("lr", self.optimizer.param_groups[0]["lr"], step)
            bar.set_postfix(loss=f"{values['total']:.3f}")
            bar.update()
        bar.close()
        self._last_batch = (images[: min(len(images), 128)], labels[: min(len(labels), 128)])
        return {name: s / max(iters, 1) for name, s in sums.items()}

    # -------------------------------------------------------------------------------- evaluation
    def _selection_set(self):
        if self._selection_dataset is None:
            self._selection_dataset = build_dataset(self.cfg, self.cfg.eval.selection,
                                                    build_transforms(self.cfg, train=False))
        return self._selection_dataset

    def _log_batch_pictures(self, writer: RunWriters, epoch: int) -> None:
        """Attention matrix, similarity before/after the MPN, attention entropy and same-class share."""
        if self._last_batch is None or self.model.mpn is None:
            return
        images, labels = self._last_batch
        self.model.eval()
        with torch.no_grad():
            out = self.model(images, labels, return_attention_weights=True)
        order = visualize.class_order(labels)
        n = len(labels)
        writer.image("graph/similarity_backbone",
                         visualize.as_image(visualize.cosine_matrix(out.embeddings), order, -1, 1), epoch)
        writer.image("graph/similarity_mpn",
                         visualize.as_image(visualize.cosine_matrix(out.mpn_embeddings), order, -1, 1), epoch)
        for layer, (edge_index, alpha) in enumerate(out.attention):
            writer.image(f"graph/attention_layer{layer}",
                             visualize.as_image(visualize.dense_attention(edge_index, alpha, n), order), epoch)
            entropy = attention_entropy(edge_index, alpha, n)
            share = same_class_attention_share(edge_index, alpha, labels)
            writer.scalar(f"graph/attention_entropy_layer{layer}", float(entropy.mean()), epoch)
            writer.scalar(f"graph/same_class_attention_layer{layer}", float(share.mean()), epoch)

    def _evaluate(self, epoch: int, writer: RunWriters) -> dict:
        cfg = self.cfg
        metrics = evaluate_model(cfg, self.model, self._selection_set(), self.device)
        split = cfg.eval.selection
        for key, value in metrics.items():
            if is_fraction_metric(key):
                writer.scalar(f"{split}/{key}", value, epoch)
        self._log_batch_pictures(writer, epoch)
        self.history.append({"epoch": epoch, **metrics})
        value = metrics[cfg.eval.metric]
        value = -math.inf if math.isnan(value) else value  # e.g. MAP@R when no query has a positive
        if self.best is None or value > self.best["value"]:
            self.best = {"epoch": epoch, "value": value, "metrics": metrics}
            self._save(self.run_dir.best)
        return metrics

    # ------------------------------------------------------------------------------------- main
    def fit(self) -> dict:
        cfg = self.cfg
        self.out.mkdir(parents=True, exist_ok=True)
        resume = self._prepare_output_dir()
        seed_everything(cfg.seed)
        if cfg.deterministic:
            torch.use_deterministic_algorithms(True, warn_only=True)
        self._build(resume)
        if resume is not None:
            self._restore(resume)
        if self.writers.enabled:
            save_config(cfg, self.run_dir.config)
        epochs = tqdm(range(self.epoch + 1, cfg.train.epochs + 1), desc="epochs", disable=not progress_enabled())
        try:
            with self.writers as writer:
                result = self._epochs(epochs, writer)
        finally:
            self._train_loader = None  # lets its persistent workers shut down
        return result

    def _epochs(self, epochs, writer: RunWriters) -> dict:
        """Train the remaining epochs, evaluating and checkpointing, then finish the run."""
        cfg = self.cfg
        for epoch in epochs:
            start = time.perf_counter()
            if epoch in cfg.train.lr_drop_epochs:
                self._drop_learning_rate()
            losses = self._train_epoch(epoch, writer)
            self.epoch = epoch
            self._check_finite("last.pt was not written")
            metrics = None
            if epoch % cfg.eval.every == 0 or epoch == cfg.train.epochs:
                metrics = self._evaluate(epoch, writer)
            self.train_time += time.perf_counter() - start
            self._save(self.run_dir.last)
            self._log_epoch(epoch, losses, metrics)
        return self._finish(writer)

    def _log_epoch(self, epoch: int, losses: dict, metrics: Optional[dict]) -> None:
        cfg = self.cfg
        parts = [f"epoch {epoch}/{cfg.train.epochs}",
                 "loss " + " ".join(f"{k} {v:.4f}" for k, v in losses.items()),
                 f"lr {self.optimizer.param_groups[0]['lr']:.3g}"]
        if metrics is not None:
            parts.append(f"{cfg.eval.selection} {cfg.eval.metric} {100 * metrics[cfg.eval.metric]:.2f} "
                         f"(best {100 * self.best['value']:.2f} @ {self.best['epoch']})")
        parts.append(f"time {self.train_time:.1f}s")
        self.writers.line(" | ".join(parts))

    def _finish(self, writer: RunWriters) -> dict:
        """Evaluate the selected checkpoint once on the test split; write metrics.json and hparams."""
        cfg = self.cfg
        best = self.run_dir.best
        if cfg.eval.selection == "test" and self.best is not None and self.best.get("metrics"):
            # Selected on the test split: best.pt's test metrics are already known, exactly.
            test = dict(self.best["metrics"])
        else:
            if best.exists():
                load_model_state(self.model, load_checkpoint(best)["model"], str(best))
            test_set = build_dataset(cfg, "test", build_transforms(cfg, train=False))
            test = evaluate_model(cfg, self.model, test_set, self.device)
        for key, value in test.items():
            if is_fraction_metric(key):
                writer.scalar(f"test/{key}", value, self.epoch)
        result = {
            "dataset": cfg.data.name,
            "epochs": self.epoch,
            "train_time_s": self.train_time,
            "test": test,
            "selection": {
                "split": cfg.eval.selection,
                "metric": cfg.eval.metric,
                "best_value": self.best["value"] if self.best else None,
                "best_epoch": self.best["epoch"] if self.best else None,
                "history": self.history,
            },
        }
        writer.metrics(result)
        writer.hparams(
            _hparams(cfg, self.model.topology),
            {f"hparam/test_{k}": v for k, v in test.items() if is_fraction_metric(k)}
            | {f"hparam/{cfg.eval.selection}_{cfg.eval.metric}": result["selection"]["best_value"] or 0.0},
        )
        writer.line("test | " + " | ".join(f"{k} {100 * v:.2f}" for k, v in test.items()
                                           if is_fraction_metric(k)))
        return result


def _hparams(cfg, topology) -> dict:
    """The config keys that tell runs apart in TensorBoard's HPARAMS view: the common ones and the
    keys the run's topology reads (no ``graph.k`` for the full graph, no MPN keys without one)."""
    keys = ["data.name", "model.backbone", "model.embedding_dim", "graph.topology"]
    keys += [k for k in topology.uses if k.startswith("graph.")]
    if topology.message_passing:
        keys += ["mpn.num_layers", "mpn.num_heads", "loss.mpn_weight"]
    keys += ["loss.temperature", "train.lr", "seed"]
    return {key: OmegaConf.select(cfg, key) for key in keys}
