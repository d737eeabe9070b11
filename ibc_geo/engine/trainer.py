"""End-to-end training (METHOD.md §1): the loop, model selection, LR drops, checkpoints, logs.

Outputs in ``output_dir``: ``config.yaml`` (``--cfg`` of it reproduces the run),
``checkpoints/last.pt`` and ``best.pt`` (written atomically), TensorBoard events, ``log.txt``
(one line per epoch) and, at the end, ``metrics.json``.
"""
from __future__ import annotations

import itertools
import logging
import math
import time
from contextlib import nullcontext
from datetime import timedelta
from pathlib import Path
from typing import Optional

import numpy as np
import torch
from omegaconf import OmegaConf
from tqdm import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from ibc_geo.config import ConfigError, config_to_dict, save_config
from ibc_geo.data import build_dataset, build_eval_loader, build_train_loader, build_transforms
from ibc_geo.engine import visualize
from ibc_geo.engine.figures import batch_figure
from ibc_geo.engine.retrieval_grid import draw_retrieval_grid
from ibc_geo.engine.checkpoint import (
    RUNTIME_KEYS,
    CheckpointError,
    checkpoint_bytes,
    config_differences,
    load_checkpoint,
    load_model_state,
    save_checkpoint,
)
from ibc_geo.engine.evaluator import Evaluation, amp_dtype, run_evaluation
from ibc_geo.engine.optim import (build_optimizer, param_groups, restore_multipliers, scheduled_lr,
                                  set_learning_rate, share_gradients, warmup_factor)
from ibc_geo.engine.writers import RunWriters
from ibc_geo.evaluation import extract_embeddings, is_fraction_metric
from ibc_geo.modeling import IntraBatchLoss, IntraBatchModel
from ibc_geo.modeling.loss import build_loss
from ibc_geo.nn.analysis import attention_statistics
from ibc_geo.utils.errors import DivergedError, UserError
from ibc_geo.utils.distributed import barrier, init_from_env, local_device, synchronize_batchnorm
from ibc_geo.utils.run_dir import RunDir
from ibc_geo.utils.io import check_free_space, check_writable_folder
from ibc_geo.utils.run_lock import RunLock
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
        device = resolve_device(cfg.device)
        self.distributed = init_from_env(device)  # under torchrun: one process per device
        self.device = local_device(device)
        self.amp_dtype = amp_dtype(cfg, self.device)
        if cfg.train.amp and self.device.type != "cuda":
            logger.warning("train.amp is on but the device is %s: training in float32", self.device)
        self.epoch = 0  # last finished epoch
        self.drops = 0  # learning-rate drops done
        self.best: Optional[dict] = None  # {"epoch", "value", "metrics"}
        self.history: list[dict] = []
        self.train_time = 0.0
        self._selection_dataset = None
        self._picture_batch = None  # one fixed P x K batch of the selection split, drawn once
        self._retrieval_queries = None  # dataset indices of the retrieval picture's fixed queries
        self.global_step = 0  # training iterations done: the one step axis of every TensorBoard scalar
        self._train_loader = None  # (DataLoader, PKSampler), built at the first epoch
        self._ddp = None  # the DistributedDataParallel wrapper of self.model, under torchrun
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
        self._seen = self._folder_state()  # compared again once the lock is held
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
        self._earlier_run = found  # deleted by _remove_earlier_run, once every check has passed
        return None

    def _folder_state(self) -> list:
        """The run files here with their sizes and times: what the start was decided on."""
        state = []
        for p in self.run_dir.run_files():
            try:
                st = p.stat()
            except FileNotFoundError:  # removed meanwhile (another run's overwrite)
                continue
            state.append((str(p), st.st_size, st.st_mtime_ns))
        return state

    def _check_unchanged(self) -> None:
        """With the lock held: refuse when another run wrote here after this one looked (they
        started together and the other finished first), instead of starting on a stale decision."""
        if self._folder_state() != self._seen:
            raise RunExistsError(
                f"output_dir {self.out} was written by another run while this one was starting; look at "
                f"what is there now, then start again (train.resume true to continue it, train.overwrite "
                f"true to replace it, or another output_dir)")

    def _remove_earlier_run(self) -> None:
        """Starting afresh: nothing of an earlier run may leak in (a stale best.pt would be reloaded
        by an LR drop before the first evaluation); files the trainer did not write stay."""
        found = getattr(self, "_earlier_run", None)
        if found is None:
            return
        barrier()  # every rank has looked before rank 0 deletes
        if found and self.writers.enabled:
            self.run_dir.remove_run_files()
            logger.info("train.overwrite: deleted %d files of the earlier run in %s", len(found), self.out)
        barrier()

    def _build(self, resume: Optional[dict]) -> None:
        cfg = self.cfg
        self.train_set = build_dataset(cfg, "train", build_transforms(cfg, train=True))
        self.model = IntraBatchModel.from_config(
            cfg, self.train_set.num_classes, pretrained="none" if resume else None).to(self.device)
        if self.distributed and cfg.train.sync_bn:  # before the optimizer takes the parameters
            synchronize_batchnorm(self.model.backbone, self.device)
        # The builders: the objective (loss.*: a pml loss's proxies sized by the training classes) and
        # the optimiser over the model's and the loss's parameter groups (train.optimizer, *lr_mult).
        self.loss_fn: IntraBatchLoss = build_loss(cfg, self.train_set.num_classes, cfg.model.embedding_dim).to(self.device)
        self.optimizer = build_optimizer(cfg, self.model, self.loss_fn)
        use_scaler = self.amp_dtype == torch.float16
        self.scaler = torch.amp.GradScaler("cuda", enabled=use_scaler)

    def _restore(self, state: dict) -> None:
        load_model_state(self.model, state["model"], str(self.run_dir.last))
        if "loss" in state:  # absent from checkpoints written before the loss had a state
            self.loss_fn.load_state_dict(state["loss"])
        self.optimizer.load_state_dict(state["optimizer"])
        restore_multipliers(self.optimizer, param_groups(self.cfg, self.model, self.loss_fn))
        if state["scaler"] and self.scaler.is_enabled():  # empty when the run began without a scaler
            self.scaler.load_state_dict(state["scaler"])
        self.model.topology.load_state_dict(state["topology"])
        self.epoch, self.drops, self.best = state["epoch"], state["drops"], state["best"]
        self.history, self.train_time = state["history"], state["train_time"]
        self.global_step = state.get("global_step", 0)
        self._last_saved_epoch = self.epoch
        set_rng_state(state["rng"])
        logger.info("resumed from epoch %d", self.epoch)

    # ------------------------------------------------------------------------------ checkpoints
    def _state(self) -> dict:
        return {
            "model": self.model.state_dict(),
            "loss": self.loss_fn.state_dict(),  # a pml loss's proxies; empty for the cross-entropies
            "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict(),
            "topology": self.model.topology.state_dict(),
            "epoch": self.epoch,
            "drops": self.drops,
            "best": self.best,
            "history": self.history,
            "train_time": self.train_time,
            "global_step": self.global_step,
            "rng": rng_state(),
            "config": config_to_dict(self.cfg),
        }

    def _best_state(self) -> dict:
        """What model selection, the LR-drop reloads and evaluation need: the weights and the run's
        metadata, not the optimizer state (``last.pt`` keeps the full resumable state); the loss's
        state (proxies), where it has one, goes with the weights it was trained with."""
        state = {"model": self.model.state_dict(), "epoch": self.epoch, "best": self.best,
                 "config": config_to_dict(self.cfg)}
        loss = self.loss_fn.state_dict()
        return {**state, "loss": loss} if loss else state

    def _save(self, path: Path) -> None:
        """A checkpoint, atomically, by the main process only (``best.pt``: :meth:`_best_state`;
        ``last.pt``: the full state); never of a non-finite state (a good checkpoint is never
        replaced by a diverged one)."""
        self._check_finite(f"{path.name} was not written")
        if self.writers.enabled:
            save_checkpoint(self._best_state() if path == self.run_dir.best else self._state(), path)
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
        tensors = list(self.model.state_dict().items()) + [(f"loss.{k}", t) for k, t in self.loss_fn.state_dict().items()]
        bad = [name for name, t in tensors if t.is_floating_point() and not bool(torch.isfinite(t).all())]
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
        factors instead (base/100 after two drops). Each parameter group keeps its multiplier
        (:mod:`ibc_geo.engine.optim`): group LR = dropped LR * ``lr_mult``; the loss's state
        (proxies) is reloaded with the weights."""
        barrier()  # rank 0 has written best.pt before any rank reads it
        best = self.run_dir.best
        self.drops += 1
        lr = scheduled_lr(self.cfg, self.drops)
        if best.exists():
            state = load_checkpoint(best)
            load_model_state(self.model, state["model"], str(best))
            if "loss" in state:
                self.loss_fn.load_state_dict(state["loss"])
            self.writers.line(f"epoch {self.epoch + 1}: LR drop to {lr:.3g}, reloaded the weights of the best "
                              f"checkpoint (epoch {state['epoch']})")
        else:
            self.writers.line(f"epoch {self.epoch + 1}: LR drop to {lr:.3g}; no best checkpoint yet (no "
                              f"evaluation before this epoch, eval.every {self.cfg.eval.every}): the current "
                              f"weights go on")
        set_learning_rate(self.optimizer, lr)

    # ---------------------------------------------------------------------------------- training
    def _train_epoch(self, epoch: int, writer: RunWriters) -> dict:
        cfg, model = self.cfg, self.model
        model.train()
        # One loader for the run, its workers persistent; every sample is augmented on a seed drawn
        # from (seed, epoch), so a resumed run sees the same images as an uninterrupted one.
        loader, sampler = self._loader()
        sampler.set_epoch(epoch)
        iters = len(sampler) if cfg.train.iters_per_epoch <= 0 else min(cfg.train.iters_per_epoch, len(sampler))
        sums: dict = {}
        autocast = (torch.autocast("cuda", dtype=self.amp_dtype) if self.amp_dtype is not None else nullcontext())
        bar = tqdm(total=iters, desc=f"epoch {epoch}/{cfg.train.epochs}", leave=False,
                   disable=not progress_enabled())
        tick = time.perf_counter()
        for it, (images, labels, _) in enumerate(itertools.islice(loader, iters)):
            images = images.to(self.device, non_blocking=True)
            labels = labels.to(self.device, non_blocking=True)
            if epoch <= cfg.train.warmup_epochs:  # linear warm-up, per iteration (engine.optim)
                set_learning_rate(self.optimizer, scheduled_lr(cfg, self.drops) * warmup_factor(cfg, epoch, it, iters))
            with autocast:
                out = self._training_model()(images, labels, distributed=self.distributed)
            # A metric loss reads the backbone embeddings (all ranks' under torchrun); ce the logits.
            extra = {"embeddings": out.embeddings} if self.loss_fn.reads_embeddings else {}
            terms = self.loss_fn(out.labels, out.backbone_logits, out.mpn_logits, **extra)
            values = {name: float(t.detach()) for name, t in terms.items()}
            for name, value in values.items():
                if not math.isfinite(value):
                    raise NonFiniteLossError(
                        f"loss term {name!r} is {value} at epoch {epoch}, iteration {it + 1}; stopping. "
                        f"{self._kept()}")
            self.optimizer.zero_grad(set_to_none=True)
            self.scaler.scale(terms["total"]).backward()
            if self.distributed:  # the loss's parameters are outside DDP: one gradient on every rank
                share_gradients(self.loss_fn.parameters())
            self.scaler.step(self.optimizer)
            self.scaler.update()
            for name, value in values.items():
                sums[name] = sums.get(name, 0.0) + value
            self.global_step += 1
            if it % cfg.train.log_every == 0:
                for name, value in values.items():
                    writer.scalar(f"loss/{name}", value, self.global_step)
                writer.scalar("lr", self.optimizer.param_groups[0]["lr"], self.global_step)
            bar.set_postfix(loss=f"{values['total']:.3f}")
            bar.update()
            if bar.disable and writer.enabled and ((it + 1) % cfg.train.log_every == 0 or it + 1 == iters):
                self._log_progress(epoch, it + 1, iters, values, time.perf_counter() - tick)
        bar.close()
        return {name: s / max(iters, 1) for name, s in sums.items()}

    def _training_model(self):
        """The model the training step calls: itself, or under torchrun its DDP wrapper (built at
        the first step, after a resume has loaded the weights; checkpoints hold ``self.model``,
        without DDP's ``module.`` prefix)."""
        if not self.distributed:
            return self.model
        if self._ddp is None:
            from torch.nn.parallel import DistributedDataParallel

            ids = [self.device.index] if self.device.type == "cuda" else None
            self._ddp = DistributedDataParallel(self.model, device_ids=ids)
        return self._ddp

    def _log_progress(self, epoch: int, done: int, iters: int, values: dict, elapsed: float) -> None:
        """Without a terminal (nohup, CI), a line every ``train.log_every`` iterations (detectron2-style)."""
        cfg = self.cfg
        rate = done / max(elapsed, 1e-9)
        left_epoch = (iters - done) / rate
        left_run = left_epoch + (cfg.train.epochs - epoch) * iters / rate
        terms = " ".join(f"{k} {v:.4f}" for k, v in values.items() if k != "total")
        logger.info("epoch %d/%d iter %d/%d | loss %.4f (%s) | %.2f it/s | ETA epoch %s, run %s",
                    epoch, cfg.train.epochs, done, iters, values["total"], terms, rate,
                    _duration(left_epoch), _duration(left_run))

    # -------------------------------------------------------------------------------- evaluation
    def _selection_set(self):
        if self._selection_dataset is None:
            self._selection_dataset = build_dataset(self.cfg, self.cfg.eval.selection,
                                                    build_transforms(self.cfg, train=False))
        return self._selection_dataset

    def _fixed_batch(self):
        """One P x K batch of the selection split, drawn once (seeded): the same images at every
        evaluation, so that the pictures compare across epochs."""
        if self._picture_batch is None:
            self._picture_batch = fixed_batch(self.cfg, self._selection_set())
        return self._picture_batch

    def _embed_items(self, dataset, indices):
        """Backbone embeddings (L2-normalised) of ``dataset[indices]``, in that order."""
        loader = build_eval_loader(self.cfg, torch.utils.data.Subset(dataset, [int(i) for i in indices]))
        embeddings, _ = extract_embeddings(self.model, loader, self.device, amp_dtype=self.amp_dtype)
        return torch.from_numpy(embeddings)

    def _log_retrieval_picture(self, writer: RunWriters, evaluation: Evaluation, queries: int = 8, k: int = 8) -> None:
        """The paper's figure at each evaluation: 8 fixed queries of the selection split with their
        top-8 neighbours in the whole split, read from the evaluation's own retrieval result (so the
        frames, green where the class matches and red where not, are the metrics' matches), each
        captioned with its rank, cosine and class."""
        if not writer.enabled or evaluation.retrieval is None:
            return
        dataset = self._selection_set()
        if self._retrieval_queries is None:
            self._retrieval_queries = visualize.picture_queries(evaluation, queries, seed=self.cfg.seed)
        rows = visualize.retrieval_picture(evaluation, self._retrieval_queries, k, class_names=dataset.class_ids)
        if rows is None:
            return
        query_ids, neighbour_ids, correct, captions = rows
        image = lambda i: dataset[int(i)][0]  # noqa: E731  (the evaluation transform)
        picture = draw_retrieval_grid([image(q) for q in query_ids], [[image(n) for n in row] for row in neighbour_ids],
                                      correct, thumb=64, mean=self.cfg.data.mean, std=self.cfg.data.std,
                                      captions=captions)
        writer.image("retrieval/top8", np.asarray(picture), self.global_step, dataformats="HWC")

    def _log_projector(self, writer: RunWriters, test_set, limit: int = 2000) -> None:
        """TensorBoard's embedding projector at the end: up to ``limit`` test items with labels and
        thumbnails."""
        if not writer.enabled:
            return
        rng = np.random.default_rng([self.cfg.seed, 4])
        items = np.sort(rng.choice(len(test_set), min(limit, len(test_set)), replace=False))
        emb = self._embed_items(test_set, items)
        mean = torch.tensor(self.cfg.data.mean).view(3, 1, 1)
        std = torch.tensor(self.cfg.data.std).view(3, 1, 1)
        thumbs = torch.stack([torch.nn.functional.interpolate((test_set[int(i)][0] * std + mean).clamp(0, 1)[None],
                                                              size=(32, 32), mode="bilinear", align_corners=False)[0]
                              for i in items])
        names = [str(test_set.class_ids[c]) for c in test_set.labels[items]]
        writer.embedding(emb, names, thumbs, self.global_step, "test_embeddings")

    def _log_batch_pictures(self, writer: RunWriters, epoch: int) -> Optional[list]:
        """The fixed batch's figure (similarities before / after the MPN, each layer's attention) and
        per layer the attention entropy, same-class share and within-row logit std next to uniform
        attention's values; returns those statistics, one dict per layer (``None`` without an MPN)."""
        if self.model.mpn is None or not writer.enabled:  # rank 0 only
            return None
        fixed = self._fixed_batch()
        if fixed is None:
            return None
        images, labels = fixed[0].to(self.device), fixed[1].to(self.device)
        out, stats = measure_attention(self.model, images, labels)
        n = len(labels)
        dense = []
        for layer, (edge_index, alpha) in enumerate(out.attention):
            dense.append(visualize.dense_attention(edge_index, alpha, n))
            for name, value in stats[layer].items():  # attention/entropy_layer0, attention/entropy_layer0_uniform
                base, uniform = (name[:-8], "_uniform") if name.endswith("_uniform") else (name, "")
                writer.scalar(f"attention/{base}_layer{layer}{uniform}", value, self.global_step)
        figure = batch_figure(labels, visualize.cosine_matrix(out.embeddings),
                              visualize.cosine_matrix(out.mpn_embeddings), dense, epoch, self.cfg.eval.selection)
        writer.figure("graph/batch", figure, self.global_step)
        return stats

    def _evaluate(self, epoch: int, writer: RunWriters) -> dict:
        cfg = self.cfg
        evaluation = run_evaluation(cfg, self.model, self._selection_set(), self.device, keep_k=8)
        metrics = evaluation.metrics
        split = cfg.eval.selection
        for key, value in metrics.items():
            if is_fraction_metric(key):  # per evaluation; the final test metrics go to test/ once
                writer.scalar(f"selection_{split}/{key}", value, self.global_step)
        attention = self._log_batch_pictures(writer, epoch)
        self._log_retrieval_picture(writer, evaluation)
        self.history.append({"epoch": epoch, **metrics})
        if attention is not None:
            self.history[-1]["attention"] = attention
        value = metrics[cfg.eval.metric]
        value = -math.inf if math.isnan(value) else value  # e.g. MAP@R when no query has a positive
        if self.best is None or value > self.best["value"]:
            self.best = {"epoch": epoch, "value": value, "metrics": metrics}
            if attention is not None:
                self.best["attention"] = attention
            self._save(self.run_dir.best)
        return metrics

    # ------------------------------------------------------------------------------------- main
    def fit(self) -> dict:
        cfg = self.cfg
        # One writer per run folder (rank 0 holds output_dir/.lock for the whole run); a live holder
        # is refused here, before anything is read or written.
        lock = RunLock(self.out)
        if self.writers.enabled:
            lock.check()
            check_writable_folder(self.out)  # read-only, or a file in the way: said before the work
        resume = self._prepare_output_dir()
        seed_everything(cfg.seed)
        if cfg.deterministic:
            torch.use_deterministic_algorithms(True, warn_only=True)
        self._build(resume)
        if cfg.eval.refine == "mpn" and self.model.mpn is None:
            raise ConfigError(f"bad value for config key 'eval.refine': 'mpn'; the test-time MPN needs a trained MPN "
                              f"and graph.topology {cfg.graph.topology!r} has none: use dba or aqe")
        if resume is not None:
            self._restore(resume)
        self._loader()  # the sampler's checks: a refused start writes nothing into output_dir
        if self.writers.enabled:  # room for the checkpoints, known now
            check_free_space(self.out, checkpoint_bytes(self.model), "the checkpoints")
        if self.writers.enabled:
            lock.acquire()  # creates output_dir
        try:
            if self.writers.enabled:
                self._check_unchanged()
            self._remove_earlier_run()
            if self.writers.enabled:
                save_config(cfg, self.run_dir.config)
            epochs = tqdm(range(self.epoch + 1, cfg.train.epochs + 1), desc="epochs", leave=False,
                          disable=not progress_enabled())
            try:
                # On a terminal, log lines go through tqdm so that they never land on a progress bar.
                redirect = logging_redirect_tqdm() if progress_enabled() else nullcontext()
                with self.writers as writer, redirect:
                    self._log_summary(resume is not None)
                    result = self._epochs(epochs, writer)
                barrier()  # no rank returns before rank 0 has written metrics.json
            finally:
                self._train_loader = None  # lets its persistent workers shut down
        finally:
            lock.release()
        return result

    def _log_summary(self, resumed: bool) -> None:
        """What the run is about to do, before the first iteration."""
        cfg, model = self.cfg, self.model
        P, K = cfg.sampler.classes_per_batch, cfg.sampler.samples_per_class
        _, sampler = self._loader()
        iters = len(sampler) if cfg.train.iters_per_epoch <= 0 else min(cfg.train.iters_per_epoch, len(sampler))
        backbone = sum(p.numel() for p in model.backbone.parameters())
        mpn = sum(p.numel() for p in model.mpn.parameters()) if model.mpn is not None else 0
        threads = f", {torch.get_num_threads()} threads" if self.device.type == "cpu" else ""
        amp = f"AMP {cfg.train.amp_dtype}" if self.amp_dtype is not None else "float32"
        lines = [
            f"{'resuming after epoch ' + str(self.epoch) if resumed else 'training'} {cfg.data.name} "
            f"into {self.out}",
            f"device {self.device}{threads}, {amp}",
            f"data: train {len(self.train_set)} images of {self.train_set.num_classes} classes; selection on "
            f"the {cfg.eval.selection} split every {cfg.eval.every} epochs ({cfg.eval.metric}); test at the end",
            f"batch {P} x {K} = {P * K}{' (P x K drawn each epoch)' if cfg.sampler.random_pk else ''}, "
            f"{iters} iterations an epoch (sampler.epoch_length {cfg.sampler.epoch_length}"
            f"{', capped by train.iters_per_epoch' if cfg.train.iters_per_epoch > 0 else ''}), "
            f"{cfg.train.epochs} epochs, LR {cfg.train.lr:.4g} dropping at {list(cfg.train.lr_drop_epochs)}",
            f"model: {cfg.model.backbone} backbone {backbone / 1e6:.2f} M parameters; graph {cfg.graph.topology}; "
            + (f"MPN {cfg.mpn.num_layers} layer(s) x {cfg.mpn.num_heads} heads, {mpn / 1e6:.2f} M parameters"
               if model.mpn is not None else "no MPN"),
            f"loss: backbone {cfg.loss.backbone}" + (f" (miner {cfg.loss.miner})" if cfg.loss.miner else "")
            + (" + MPN cross-entropy" if model.mpn is not None else "") + f"; optimizer {cfg.train.optimizer}, LR x "
            + ", ".join(f"{g['lr_mult']:g} for {g['name']}" for g in self.optimizer.param_groups)
            + (f", linear warm-up over {cfg.train.warmup_epochs} epochs" if cfg.train.warmup_epochs else ""),
        ]
        for line in lines:
            self.writers.line(line)

    def _loader(self):
        """The run's one training loader (its workers persist across epochs) and its sampler."""
        if self._train_loader is None:
            self._train_loader = build_train_loader(self.cfg, self.train_set, self.epoch + 1)
        return self._train_loader

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
            seconds = time.perf_counter() - start
            self.train_time += seconds
            self._save(self.run_dir.last)
            self._log_epoch(epoch, losses, metrics, seconds)
        return self._finish(writer)

    def _log_epoch(self, epoch: int, losses: dict, metrics: Optional[dict], seconds: float) -> None:
        cfg = self.cfg
        parts = [f"epoch {epoch}/{cfg.train.epochs}",
                 "loss " + " ".join(f"{k} {v:.4f}" for k, v in losses.items()),
                 f"lr {self.optimizer.param_groups[0]['lr']:.3g}"]
        if metrics is not None:
            parts.append(f"{cfg.eval.selection} {cfg.eval.metric} {100 * metrics[cfg.eval.metric]:.2f}% "
                         f"(best {100 * self.best['value']:.2f}% at epoch {self.best['epoch']})")
        parts.append(f"epoch time {seconds:.1f} s, training time so far {_duration(self.train_time)}")
        self.writers.line(" | ".join(parts))

    def _finish(self, writer: RunWriters) -> dict:
        """Evaluate the selected checkpoint once on the test split; write metrics.json and hparams."""
        cfg = self.cfg
        barrier()
        best = self.run_dir.best
        refined = None
        if cfg.eval.selection == "test" and self.best is not None and self.best.get("metrics") \
                and cfg.eval.refine == "none":
            # Selected on the test split: best.pt's test metrics are already known, exactly.
            test = dict(self.best["metrics"])
        else:
            if best.exists():
                load_model_state(self.model, load_checkpoint(best)["model"], str(best))
            test_set = build_dataset(cfg, "test", build_transforms(cfg, train=False))
            evaluation = run_evaluation(cfg, self.model, test_set, self.device, refine=True)
            test, refined = evaluation.metrics, evaluation.refined
        if writer.enabled:  # the projector shows the selected model's test embeddings
            if cfg.eval.selection == "test":
                if best.exists():
                    load_model_state(self.model, load_checkpoint(best)["model"], str(best))
                test_set = self._selection_set()
            self._log_projector(writer, test_set)
        for key, value in test.items():
            if is_fraction_metric(key):
                writer.scalar(f"test/{key}", value, self.global_step)
        if refined is not None:  # beside the headline, never instead of it
            for key, value in refined["metrics"].items():
                if is_fraction_metric(key):
                    writer.scalar(f"test/refined/{key}", value, self.global_step)
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
        if refined is not None:
            result["refined"] = refined
        if self.best is not None and "attention" in self.best:
            # The selected model's attention on the fixed selection batch, per layer (nn.analysis).
            result["attention"] = self.best["attention"]
        writer.metrics(result)
        writer.hparams(
            _hparams(cfg, self.model.topology),
            {f"hparam/test_{k}": v for k, v in test.items() if is_fraction_metric(k)}
            | {f"hparam/{cfg.eval.selection}_{cfg.eval.metric}": result["selection"]["best_value"] or 0.0},
        )
        writer.line("test | " + " | ".join(f"{k} {100 * v:.2f}%" for k, v in test.items()
                                           if is_fraction_metric(k)))
        if refined is not None:
            writer.line(f"test refined ({cfg.eval.refine}: "
                        + ", ".join(f"{k} {v}" for k, v in refined["refinement"].items() if k != "method") + ") | "
                        + " | ".join(f"{k} {100 * v:.2f}%" for k, v in refined["metrics"].items()
                                     if is_fraction_metric(k)))
        kept = f"{self.run_dir.best} (epoch {self.best['epoch']})" if self.best else "no best.pt"
        writer.line(f"done in {_duration(self.train_time)}: test metrics in {self.run_dir.metrics}; checkpoints "
                    f"{self.run_dir.last} (epoch {self.epoch}, resumable) and {kept}; "
                    f"tensorboard --logdir {self.out}")
        return result


def fixed_batch(cfg, dataset):
    """``(images, labels)`` of one P x K batch of ``dataset`` (seeded by ``cfg.seed``; P capped at its
    class count), or ``None`` below 2 classes: the batch of the TensorBoard pictures and of the
    attention statistics in ``metrics.json``."""
    from ibc_geo.data import PKSampler

    classes = len(set(dataset.labels.tolist()))
    P = min(cfg.sampler.classes_per_batch, classes)
    if P < 2:
        return None
    batch = PKSampler(dataset.labels, P, cfg.sampler.samples_per_class, seed=cfg.seed, epoch_length="cover").batches()[0]
    items = [dataset[i] for i in batch]
    return torch.stack([img for img, _, _ in items]), torch.tensor([label for _, label, _ in items])


def measure_attention(model, images: torch.Tensor, labels: torch.Tensor):
    """``(output, stats)``: the model's forward pass on one labelled batch in eval mode (no
    gradients; its mode restored after) with each MPN layer's attention, and per layer
    :func:`~ibc_geo.nn.analysis.attention_statistics`."""
    was_training = model.training
    model.eval()
    with torch.no_grad():
        out = model(images, labels, return_attention_weights=True)
    model.train(was_training)
    n = len(labels)
    return out, [attention_statistics(edge_index, alpha, labels, n) for edge_index, alpha in out.attention]


def _hparams(cfg, topology) -> dict:
    """The config keys that tell runs apart in TensorBoard's HPARAMS view: the common ones and the
    keys the run's topology reads (no ``graph.k`` for the full graph, no MPN keys without one)."""
    keys = ["data.name", "model.backbone", "model.embedding_dim", "graph.topology"]
    keys += [k for k in topology.uses if k.startswith("graph.")]
    if topology.message_passing:
        keys += ["mpn.num_layers", "mpn.num_heads", "loss.mpn_weight"]
    keys += ["loss.temperature", "train.lr", "seed"]
    return {key: OmegaConf.select(cfg, key) for key in keys}


def _duration(seconds: float) -> str:
    """``3725.2`` -> ``1:02:05``."""
    return str(timedelta(seconds=int(round(seconds))))
