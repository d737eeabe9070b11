"""What an ablation command will do and what it did: the plan, its runs, the result, its error.

Types only, shared by :mod:`~ibc_geo.ablation.runner` (which builds and executes a plan) and
:mod:`~ibc_geo.ablation.report` (which tabulates it), so that neither imports the other's logic.
"""
from __future__ import annotations

import shlex
from dataclasses import dataclass, field

from omegaconf import DictConfig

from ibc_geo.ablation.grid import Grid, GridPoint
from ibc_geo.utils.errors import UserError


class AblationError(UserError, RuntimeError):
    """A run folder the runner cannot use as is (changed config, unreadable metrics)."""

    exit_code = 1


@dataclass
class Run:
    """One training of an ablation: a grid point with a seed."""

    point: GridPoint
    seed: int
    run_dir: str
    overrides: list  # KEY VALUE list (after the user's) that builds this run's config
    cfg: DictConfig  # the checked config (without the status' resume / overwrite flags)
    status: str  # done | resume | restart | new

    @property
    def name(self) -> str:
        return f"{self.point.name}/seed={self.seed}"


@dataclass
class AblationPlan:
    """Everything one ablation command will do, built and checked before any training."""

    grid: Grid
    points: list
    seeds: list
    runs: list
    output_dir: str
    cfg_file: str | None
    overrides: list
    grid_file: str | None = None
    seeds_given: bool = False  # whether --seeds overrode the grid's / config's seeds

    def command(self) -> str:
        """The ``tools/ablate.py`` command line that reproduces this plan."""
        words = ["python", "tools/ablate.py"]
        if self.cfg_file is not None:
            words += ["--cfg", self.cfg_file]
        words += ["--grid", self.grid_file or "GRID.yaml"]
        if self.seeds_given:
            words += ["--seeds"] + [str(s) for s in self.seeds]
        words += self.overrides
        return " ".join(shlex.quote(str(w)) for w in words)

    def counts(self) -> dict:
        counts = {status: 0 for status in ("done", "resume", "restart", "new")}
        for run in self.runs:
            counts[run.status] += 1
        return counts


@dataclass
class AblationResult:
    plan: AblationPlan
    summaries: list = field(default_factory=list)  # PointSummary, best first; empty on a dry run
    files: dict = field(default_factory=dict)  # "csv" / "md" / "hparams" -> path
    trained: list = field(default_factory=list)  # names of the runs trained by this call
