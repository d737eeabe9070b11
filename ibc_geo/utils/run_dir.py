"""One description of a run folder: what a training run writes, and where.

::

    output_dir/
        config.yaml            the resolved config (``--cfg`` of it reproduces the run)
        log.txt                one line per epoch, then the test line
        events.out.tfevents.*  TensorBoard
        checkpoints/last.pt    the full resumable state, every epoch
        checkpoints/best.pt    the selected model
        metrics.json           the run's final record: its presence marks the run finished
        metrics_<split>.json   tools/eval.py's evaluations of the run
        hparams/               TensorBoard's HPARAMS entry
        projector_config.pbtxt TensorBoard's embedding projector, showing
        <step>/test_embeddings/ the selected model's test embeddings (tensors, labels, thumbnails)
        .lock                  held by the training process while it runs (host and pid inside)

The trainer, the ablation runner and the evaluation tool all ask this class.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional


def _same_existing(a, b) -> bool:
    """Both exist and are one file (a case-insensitive file system spells it otherwise)."""
    try:
        return os.path.samestat(os.stat(a), os.stat(b))
    except OSError:
        return False


@dataclass(frozen=True)
class RunDir:
    """The paths of the run folder ``root``."""

    root: Path

    def __init__(self, root: "str | os.PathLike") -> None:
        object.__setattr__(self, "root", Path(root))

    @property
    def config(self) -> Path:
        return self.root / "config.yaml"

    @property
    def log(self) -> Path:
        return self.root / "log.txt"

    @property
    def checkpoints(self) -> Path:
        return self.root / "checkpoints"

    @property
    def last(self) -> Path:
        return self.checkpoints / "last.pt"

    @property
    def best(self) -> Path:
        return self.checkpoints / "best.pt"

    @property
    def metrics(self) -> Path:
        return self.root / "metrics.json"

    def split_metrics(self, split: str) -> Path:
        """Where ``tools/eval.py`` writes its evaluation of this run on ``split``."""
        return self.root / f"metrics_{split}.json"

    @property
    def hparams(self) -> Path:
        return self.root / "hparams"

    def events(self) -> List[Path]:
        return sorted(self.root.glob("events.out.tfevents*"))

    @property
    def projector_config(self) -> Path:
        return self.root / "projector_config.pbtxt"

    def projector_files(self) -> List[Path]:
        """``projector_config.pbtxt`` and the files of ``<step>/test_embeddings/`` that exist."""
        files = [self.projector_config] if self.projector_config.is_file() else []
        for folder in sorted(self.root.glob("[0-9]*/test_embeddings")):
            if folder.parent.name.isdigit() and folder.is_dir():
                files += sorted(p for p in folder.iterdir() if p.is_file())
        return files

    def eval_records(self) -> List[Path]:
        return sorted(self.root.glob("metrics_*.json"))

    def run_files(self) -> List[Path]:
        """The files of a run that exist here: those the trainer writes (config, log, TensorBoard
        events and hparams, checkpoints, metrics.json) and tools/eval.py's ``metrics_<split>.json``.
        Nothing else in the folder belongs to the run."""
        files = [p for p in (self.config, self.log, self.last, self.best, self.metrics) if p.is_file()]
        files += self.events() + self.eval_records() + self.projector_files()
        files += [p for p in (self.last.with_name(self.last.name + ".tmp"),
                              self.best.with_name(self.best.name + ".tmp")) if p.is_file()]
        if self.hparams.is_dir():
            files += sorted(p for p in self.hparams.rglob("events.out.tfevents*") if p.is_file())
        return files

    @property
    def lock(self) -> Path:
        """``.lock``: held by the training process writing here (host and pid inside)."""
        return self.root / ".lock"

    def trainer_files(self) -> List[Path]:
        """The paths the trainer owns here, whether they exist or not (events and hparams: those
        that exist): nothing but the run writes them, and no tool ever does."""
        files = [self.config, self.log, self.last, self.best, self.metrics, self.lock,
                 self.last.with_name(self.last.name + ".tmp"), self.best.with_name(self.best.name + ".tmp")]
        files += self.events() + self.projector_files()
        if self.hparams.is_dir():
            files += sorted(p for p in self.hparams.rglob("*") if p.is_file())
        return files

    def looks_like_run(self) -> bool:
        """Whether a training run wrote here (its config.yaml, log.txt, checkpoints/ or metrics.json)."""
        return any(p.exists() for p in (self.config, self.log, self.checkpoints, self.metrics))

    @classmethod
    def owner_of(cls, path: "str | os.PathLike") -> "Optional[RunDir]":
        """The run folder whose own file :meth:`trainer_files` ``path`` is (also through links), or
        ``None``: a tool refuses to write there, whatever its flags."""
        real = Path(os.path.realpath(path))
        for root in {real.parent, real.parent.parent, Path(os.path.abspath(path)).parent,
                     Path(os.path.abspath(path)).parent.parent}:
            run = cls(root)
            if run.looks_like_run() and any(os.path.realpath(p) == str(real) or _same_existing(p, real)
                                            for p in run.trainer_files()):
                return run
        return None

    def remove_run_files(self) -> List[Path]:
        """Delete :meth:`run_files` (and ``checkpoints/``, ``hparams/`` when that leaves them empty);
        returns what was deleted. Other files stay."""
        files = self.run_files()
        for p in files:
            p.unlink(missing_ok=True)
        for folder in sorted((d for d in self.hparams.rglob("*") if d.is_dir()), reverse=True) if self.hparams.is_dir() else []:
            if not any(folder.iterdir()):
                folder.rmdir()
        steps = sorted({p.parent for p in files if p.parent.name == "test_embeddings"})
        for folder in steps + sorted({d.parent for d in steps}) + [self.hparams, self.checkpoints]:
            if folder.is_dir() and not any(folder.iterdir()):
                folder.rmdir()
        return files

    def is_finished(self) -> bool:
        return self.metrics.is_file()

    def holds_run(self) -> bool:
        """Whether a training run (finished, or resumable) lives here."""
        return self.metrics.is_file() or self.last.is_file()

    def status(self) -> str:
        """``done`` (metrics.json), ``resume`` (last.pt), ``restart`` (something else is there) or
        ``new`` (empty or absent)."""
        if self.is_finished():
            return "done"
        if self.last.is_file():
            return "resume"
        if self.root.is_dir() and any(self.root.iterdir()):
            return "restart"
        return "new"
