"""Ablations: train a grid of config points x seeds and compare them in one table.

``python tools/ablate.py --cfg BASE.yaml --grid GRID.yaml [--seeds 0 1 2] [KEY VALUE ...]``;
see :mod:`ibc_geo.ablation.grid` for the grid file format, :mod:`ibc_geo.ablation.runner` for run
folders, skipping and resuming, and :mod:`ibc_geo.ablation.report` for the outputs.
"""
from ibc_geo.ablation.grid import Grid, GridError, GridPoint, load_grid, parse_grid
from ibc_geo.ablation.report import PointSummary, read_metrics, summarize, write_reports
from ibc_geo.ablation.plan import AblationError, AblationPlan, AblationResult, Run
from ibc_geo.ablation.runner import (
    format_plan,
    plan_ablation,
    run_ablation,
    run_status,
)

__all__ = [
    "AblationError",
    "AblationPlan",
    "AblationResult",
    "Grid",
    "GridError",
    "GridPoint",
    "PointSummary",
    "Run",
    "format_plan",
    "load_grid",
    "parse_grid",
    "plan_ablation",
    "read_metrics",
    "run_ablation",
    "run_status",
    "summarize",
    "write_reports",
]
