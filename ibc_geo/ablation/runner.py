"""Run an ablation: one training per grid point and seed, then one table.

Every run goes through the code path of ``tools/train.py``: its config is built by
:func:`ibc_geo.config.load_config` from the base config file, the user's ``KEY VALUE`` overrides,
the point's values, and ``seed`` / ``output_dir`` (later ones win), checked, then handed to
:func:`ibc_geo.engine.train`. All configs are built and checked before the first training, so an
invalid point (e.g. ``graph.k`` not below the batch size) stops the ablation before it starts.

Run folders are ``<root>/<point>/seed=<seed>``, the root being ``output_dir`` when it is given on the
command line, else ``<parent of the base output_dir>/ablations/<grid name>`` (:func:`ablation_root`);
a run's state is read from its folder:

========  ======================================  ==========================================
status    folder holds                            what the runner does
========  ======================================  ==========================================
done      ``metrics.json``                        nothing (its metrics go into the table)
resume    ``checkpoints/last.pt``, no metrics     trains with ``train.resume true``
restart   other files, no checkpoint              trains with ``train.overwrite true``
new       nothing                                 trains
========  ======================================  ==========================================

A ``done`` or ``resume`` folder whose ``config.yaml`` differs from the config the command builds
now (other than ``output_dir``, ``train.resume``, ``train.overwrite``) is an error: mixing runs of
two configs into one table would be silently wrong. Runs go seed by seed (all points with the first
seed, then the next seed), so an interrupted ablation already covers every point once.
"""
from __future__ import annotations

import json
import logging
import os
import time
from typing import Callable, Sequence

from omegaconf import DictConfig

from ibc_geo.ablation.grid import (
    RESERVED_KEYS,
    Grid,
    GridError,
    GridPoint,
    check_point_effect,
    check_seeds,
    load_grid,
)
from ibc_geo.ablation.plan import AblationError, AblationPlan, AblationResult, Run
from ibc_geo.ablation.report import summarize, write_reports
from ibc_geo.config import ConfigError, config_differences, config_to_dict, load_config, parse_overrides
from ibc_geo.utils.run_dir import RunDir
from ibc_geo.utils.runtime import is_main_process

logger = logging.getLogger(__name__)

# Keys that may differ between a run folder's saved config and the config built now.
NOT_COMPARED = ("output_dir", "train.resume", "train.overwrite")
# Extra overrides per run status.
STATUS_OVERRIDES = {"new": [], "restart": ["train.overwrite", "true"], "resume": ["train.resume", "true"]}


def run_status(run_dir: str) -> str:
    """done | resume | restart | new, from what ``run_dir`` holds (see the module docstring)."""
    return RunDir(run_dir).status()


def config_drift(run: Run) -> list[str]:
    """``key: saved -> now`` for each key where the run folder's config.yaml differs from ``run.cfg``."""
    path = str(RunDir(run.run_dir).config)
    if not os.path.isfile(path):
        return []
    try:
        saved = load_config(path, check=False)
    except ConfigError as e:
        return [f"its {RunDir(run.run_dir).config.name} no longer loads ({e})"]
    return config_differences(config_to_dict(saved), config_to_dict(run.cfg), ignore=NOT_COMPARED)


def _override_keys(overrides: Sequence[str]) -> list[str]:
    def walk(node, prefix):
        for key, value in node.items():
            if isinstance(value, dict) and value:
                yield from walk(value, f"{prefix}{key}.")
            else:
                yield f"{prefix}{key}"

    return list(walk(parse_overrides(list(overrides)), ""))


def ablation_root(base_output_dir: str, grid_file: str | None, given: bool) -> str:
    """Where the runs go: ``output_dir`` when given on the command line; otherwise
    ``<parent of the base config's output_dir>/ablations/<grid file name>`` (for configs/demo.yaml and
    demo_topology.yaml: ``output/ablations/demo_topology``), never inside the base config's own run
    folder, where ``tools/train.py`` with that config writes its run."""
    if given:
        return base_output_dir
    stem = os.path.splitext(os.path.basename(grid_file))[0] if grid_file else "grid"
    return os.path.join(os.path.dirname(os.path.normpath(base_output_dir)) or "output", "ablations", stem)


def plan_ablation(
    cfg_file: str | None,
    grid: str | os.PathLike | Grid,
    seeds: Sequence[int] | None = None,
    overrides: Sequence[str] = (),
) -> AblationPlan:
    """Build and check every run's config and read each run folder's state; trains nothing.

    Raises :class:`~ibc_geo.ablation.grid.GridError` (a ``ConfigError``) for an invalid grid or
    point, listing every invalid point, and :class:`AblationError` for run folders whose saved
    config differs from the one built now.
    """
    grid_file = None
    if not isinstance(grid, Grid):
        grid_file = os.fspath(grid)
        grid = load_grid(grid_file)
    overrides = [str(w) for w in overrides]
    base = load_config(cfg_file, overrides, check=False)  # unknown keys and bad types fail here
    for key in _override_keys(overrides):
        if key in grid.values:
            raise GridError(
                f"override {key!r} on the command line is varied by {grid.source}; "
                f"the grid would overwrite it at every point: drop one of the two"
            )
        if key == "seed" or key in ("train.resume", "train.overwrite"):
            raise GridError(f"override {key!r} on the command line is set per run: {RESERVED_KEYS[key]}")
    if seeds is not None:
        seeds, seeds_given = check_seeds(seeds), True
    else:
        seeds, seeds_given = (grid.seeds or [int(base.seed)]), False
    root = ablation_root(base.output_dir, grid_file, "output_dir" in _override_keys(overrides))
    points = grid.points()

    runs, invalid, same_config = [], {}, {}
    for seed in seeds:
        for point in points:
            run_dir = os.path.join(root, point.name, f"seed={seed}")
            run_overrides = point.overrides() + ["seed", str(seed), "output_dir", json.dumps(run_dir)]
            try:
                cfg = load_config(cfg_file, overrides, layers=[(point.overrides(), f"point {point.name!r} of {grid.source}"),
                                                             (run_overrides[-4:], "the runner")])
                check_point_effect(grid, point, cfg)
            except ConfigError as e:
                invalid.setdefault(point.name, f"{e}")
                continue
            # Two points that build one config (e.g. train.lr 1e-3 and 0.001) would train it twice.
            identity = json.dumps(config_to_dict(cfg) | {"output_dir": None}, sort_keys=True, default=str)
            twin = same_config.setdefault((seed, identity), point.name)
            if twin != point.name:
                invalid.setdefault(point.name, f"builds the same config as point {twin!r}: its values are "
                                               f"the same once read as config values; list one of them")
                continue
            runs.append(Run(point, seed, run_dir, run_overrides, cfg, run_status(run_dir)))
    if invalid:
        lines = "\n".join(f"  - {name}: {msg}" for name, msg in invalid.items())
        raise GridError(
            f"{len(invalid)} of {len(points)} points of {grid.source} (base config "
            f"{cfg_file or 'defaults'}) are invalid; nothing was trained:\n{lines}"
        )

    drifted = []
    for run in runs:
        if run.status in ("done", "resume"):
            drift = config_drift(run)
            if drift:
                drifted.append(f"  - {run.run_dir} ({run.status}): " + "; ".join(drift[:5])
                               + (f"; and {len(drift) - 5} more" if len(drift) > 5 else ""))
    if drifted:
        raise AblationError(
            "run folders hold runs of a different config than this command builds (saved -> now); "
            "delete those folders or choose another output_dir:\n" + "\n".join(drifted)
        )
    return AblationPlan(grid=grid, points=points, seeds=list(seeds), runs=runs, output_dir=root,
                        cfg_file=cfg_file, overrides=overrides, grid_file=grid_file, seeds_given=seeds_given)


def format_plan(plan: AblationPlan) -> str:
    """The runs of ``plan`` with their state and overrides, for ``--dry-run``."""
    counts = plan.counts()
    lines = [
        f"{plan.command()}",
        f"{len(plan.points)} points x {len(plan.seeds)} seeds = {len(plan.runs)} runs in {plan.output_dir}",
    ]
    width = max(len(run.name) for run in plan.runs)
    for run in plan.runs:
        point = " ".join(run.point.overrides()) or "(base config)"
        lines.append(f"  {run.status:<8} {run.name:<{width}}  {point}")
    lines.append(
        f"{counts['done']} done, {counts['resume']} to resume, {counts['restart']} to restart "
        f"(no checkpoint yet), {counts['new']} to start"
    )
    return "\n".join(lines) + "\n"


def run_ablation(
    cfg_file: str | None,
    grid: str | os.PathLike | Grid,
    seeds: Sequence[int] | None = None,
    overrides: Sequence[str] = (),
    dry_run: bool = False,
    train_fn: Callable[[DictConfig], dict] | None = None,
) -> AblationResult:
    """Plan, train every unfinished run with ``train_fn`` (default :func:`ibc_geo.engine.train`),
    then write ``results.csv``, ``results.md`` and TensorBoard hparams into the output folder.

    ``train_fn(cfg)`` must train in ``cfg.output_dir`` and leave ``metrics.json`` there.
    With ``dry_run`` nothing is trained or written.
    """

    plan = plan_ablation(cfg_file, grid, seeds, overrides)
    result = AblationResult(plan=plan)
    if dry_run:
        return result
    if train_fn is None:
        from ibc_geo.engine import train as train_fn
    todo = [run for run in plan.runs if run.status != "done"]
    logger.info("ablation %s: %d runs, %d already done, %d to train", plan.grid.source,
                len(plan.runs), len(plan.runs) - len(todo), len(todo))
    for i, run in enumerate(todo, 1):
        cfg = load_config(plan.cfg_file, plan.overrides + run.overrides + STATUS_OVERRIDES[run.status])
        logger.info("[%d/%d] %s %s", i, len(todo), "resuming" if run.status == "resume" else "training", run.name)
        start = time.perf_counter()
        train_fn(cfg)
        if not RunDir(run.run_dir).is_finished():
            raise AblationError(
                f"training of {run.name} returned without writing {RunDir(run.run_dir).metrics}"
            )
        run.status = "done"
        result.trained.append(run.name)
        logger.info("[%d/%d] %s done in %.1f s", i, len(todo), run.name, time.perf_counter() - start)
    result.summaries = summarize(plan)
    if is_main_process():  # under torchrun every rank trains; rank 0 writes the tables
        result.files = write_reports(plan, result.summaries)
    return result
