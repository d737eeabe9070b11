"""The ablation's table: mean and std over seeds per grid point, as CSV, Markdown and TensorBoard hparams.

Columns, from each run's ``metrics.json``: the selection metric at its best epoch
(``selection.best_value``, the sort key), the final test Recall@K for every K, NMI (when computed),
MAP@R, the training time and, for runs with an MPN, each layer's attention at the selected epoch
(``metrics.json`` ``attention``: entropy and its uniform value, same-class share and its chance
value, the within-row logit std). ``results.csv`` holds fractions as written by the runs (full
precision, ``<column>_mean`` / ``<column>_std``); ``results.md`` holds percentages. The std is the
sample standard deviation over seeds (n - 1 in the denominator), empty for a single seed.

With a ``reference:`` point in the grid, both files also give, for every other point and column,
the per-seed difference to the reference over the seeds both have (paired: one seed, the same
batches): ``<column>_diff_mean`` / ``_diff_std`` / ``_diff_n`` in the CSV, a second table in the
Markdown.
TensorBoard hparams go to ``<output_dir>/hparams/<point>`` (rewritten on every call): the means,
and the stds as ``..._std``, under the metric names the trainer gives each run's own hparams
(``test_recall@1``, ``val_recall@1``), so ``tensorboard --logdir <output_dir>`` shows, under HPARAMS,
one row per point next to one row per run, and the training curves of every run.
"""
from __future__ import annotations

import csv
import io
import json
import math
import os
import shutil
import statistics
from dataclasses import dataclass, field

from ibc_geo.ablation.grid import GridPoint
from ibc_geo.ablation.plan import AblationError, AblationPlan
from ibc_geo.evaluation.metrics import recall_k_of
from ibc_geo.utils.io import atomic_write_text
from ibc_geo.utils.run_dir import RunDir

TIME_COLUMN = "train_time_s"
SELECTION_PREFIX = "best_"
ATTENTION_PREFIX = "attention/"
#: Attention statistics of ``metrics.json`` that become columns, with their Markdown names.
ATTENTION_STATS = {"same_class": "same-class", "same_class_uniform": "chance", "self": "on self",
                   "entropy": "entropy", "entropy_uniform": "uniform", "logit_std": "logit std",
                   "mass_on_nodes": "on nodes"}


def read_metrics(run_dir: str) -> dict:
    """The checked content of ``run_dir/metrics.json``."""
    path = str(RunDir(run_dir).metrics)
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, json.JSONDecodeError) as e:
        raise AblationError(f"cannot read {path}: {e}") from e
    for key, kind in (("test", dict), ("selection", dict), (TIME_COLUMN, (int, float))):
        if not isinstance(data.get(key), kind):
            raise AblationError(f"{path} lacks {key!r} (expected {getattr(kind, '__name__', 'a number')})")
    for key in ("split", "metric", "best_value"):
        if key not in data["selection"]:
            raise AblationError(f"{path} lacks 'selection.{key}'")
    return data


_recall_k = recall_k_of  # the evaluation module knows its metric names


def label(column: str) -> str:
    """Markdown header of a column id: ``test/recall@4`` -> ``R@4``, ``best_val/map@r`` -> ``val MAP@R (best)``."""
    if column == TIME_COLUMN:
        return "train time (s)"
    if column.startswith(ATTENTION_PREFIX):
        layer, stat = column[len(ATTENTION_PREFIX):].split("/", 1)
        return f"{ATTENTION_STATS[stat]} {layer.replace('layer', 'L')}"
    prefix, metric = column.split("/", 1)
    k = _recall_k(metric)
    name = f"R@{k}" if k is not None else {"nmi": "NMI", "map@r": "MAP@R"}.get(metric, metric)
    if prefix.startswith(SELECTION_PREFIX):
        return f"{prefix[len(SELECTION_PREFIX):]} {name} (best)"
    return name


@dataclass
class PointSummary:
    """The metrics of one grid point over its seeds."""

    point: GridPoint
    seeds: list
    values: dict  # column id -> [value per seed], or None where a seed lacks it
    by_seed: dict = field(default_factory=dict)  # seed -> {column id: value}

    def differences(self, reference: "PointSummary", column: str) -> list:
        """This point minus ``reference`` in ``column``, one value per seed that both have (paired)."""
        return [row[column] - reference.by_seed[seed][column] for seed, row in sorted(self.by_seed.items())
                if column in row and column in reference.by_seed.get(seed, {})]

    def mean(self, column: str) -> float | None:
        vals = self.values.get(column)
        return statistics.fmean(vals) if vals else None

    def std(self, column: str) -> float | None:
        vals = self.values.get(column)
        return statistics.stdev(vals) if vals and len(vals) > 1 else None


def columns_of(summaries: list) -> list[str]:
    """Column ids in table order: selection, test R@K by K, NMI, MAP@R, time."""
    names = set()
    for s in summaries:
        names.update(s.values)
    selection = sorted(c for c in names if c.startswith(SELECTION_PREFIX))
    tests = [c for c in names if c.startswith("test/")]
    recalls = sorted((c for c in tests if _recall_k(c[5:]) is not None), key=lambda c: _recall_k(c[5:]))
    rest = [c for c in ("test/nmi", "test/map@r") if c in names]
    layers = sorted({c.split("/")[1] for c in names if c.startswith(ATTENTION_PREFIX)}, key=lambda l: int(l[5:]))
    attention = [f"{ATTENTION_PREFIX}{layer}/{stat}" for layer in layers for stat in ATTENTION_STATS
                 if f"{ATTENTION_PREFIX}{layer}/{stat}" in names]
    return selection + recalls + rest + attention + ([TIME_COLUMN] if TIME_COLUMN in names else [])


def selection_column(columns: list) -> str | None:
    """The column of the selection metric (the sort key), or None when no run selected an epoch."""
    return next((c for c in columns if c.startswith(SELECTION_PREFIX)), None)


def summarize(plan: AblationPlan) -> list[PointSummary]:
    """One :class:`PointSummary` per point from the runs' ``metrics.json``, best selection value first."""
    by_point: dict = {point.name: [] for point in plan.points}
    selection = set()
    for run in plan.runs:
        by_point[run.point.name].append((run.seed, read_metrics(run.run_dir)))
    summaries = []
    for point in plan.points:
        runs = sorted(by_point[point.name], key=lambda r: r[0])
        per_run = []
        for _, m in runs:
            sel = m["selection"]
            selection.add((sel["split"], sel["metric"]))
            row = {TIME_COLUMN: float(m[TIME_COLUMN])}
            if isinstance(sel["best_value"], (int, float)):  # None when the run selected no epoch
                row[f"{SELECTION_PREFIX}{sel['split']}/{sel['metric']}"] = float(sel["best_value"])
            for key, value in m["test"].items():
                if (_recall_k(key) is not None or key in ("nmi", "map@r")) and isinstance(value, (int, float)):
                    row[f"test/{key}"] = float(value)
            for layer, stats in enumerate(m.get("attention") or []):
                for stat in ATTENTION_STATS:
                    if isinstance(stats.get(stat), (int, float)):
                        row[f"{ATTENTION_PREFIX}layer{layer}/{stat}"] = float(stats[stat])
            per_run.append(row)
        columns = set().union(*per_run) if per_run else set()
        values = {c: ([row[c] for row in per_run] if all(c in row for row in per_run) else None) for c in columns}
        summaries.append(PointSummary(point=point, seeds=[seed for seed, _ in runs], values=values,
                                      by_seed={seed: row for (seed, _), row in zip(runs, per_run)}))
    if len(selection) > 1:
        raise AblationError(
            f"the runs of {plan.output_dir} select their checkpoints by different split/metric pairs "
            f"{sorted(selection)}; the table needs one"
        )
    sel_column = selection_column(columns_of(summaries))

    def key(item):
        index, s = item
        value = s.mean(sel_column) if sel_column else None
        return (value is None, -(value if value is not None else 0.0), index)

    return [s for _, s in sorted(enumerate(summaries), key=key)]


def _value_text(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None or isinstance(value, (list, dict)):
        return json.dumps(value)
    return str(value)


def _grid_cells(plan: AblationPlan, summary: PointSummary, missing: str) -> list[str]:
    """The point's value of each grid key; ``missing`` where a tie leaves the key out."""
    values = summary.point.as_dict()
    return [_value_text(values[k]) if k in values else missing for k in plan.grid.keys]


def reference_of(plan: AblationPlan, summaries: list) -> PointSummary | None:
    """The summary of the grid's ``reference:`` point, or ``None`` without one."""
    point = plan.grid.reference_point()
    return None if point is None else next(s for s in summaries if s.point.name == point.name)


def paired(diffs: list) -> tuple:
    """``(mean, std, n)`` of per-seed differences (std ``None`` below two seeds, all ``None`` for none)."""
    if not diffs:
        return None, None, 0
    return statistics.fmean(diffs), (statistics.stdev(diffs) if len(diffs) > 1 else None), len(diffs)


def to_csv(plan: AblationPlan, summaries: list) -> str:
    columns = columns_of(summaries)
    reference = reference_of(plan, summaries)
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    header = ["point"] + plan.grid.keys + ["n_seeds", "seeds"]
    for c in columns:
        header += [f"{c}_mean", f"{c}_std"]
    if reference is not None:
        header.append("reference")
        for c in columns:
            header += [f"{c}_diff_mean", f"{c}_diff_std", f"{c}_diff_n"]
    writer.writerow(header)
    for s in summaries:
        row = [s.point.name] + _grid_cells(plan, s, "") + [len(s.seeds), " ".join(map(str, s.seeds))]
        for c in columns:
            row += ["" if v is None else repr(v) for v in (s.mean(c), s.std(c))]
        if reference is not None:
            row.append(reference.point.name)
            for c in columns:
                mean, std, n = paired(s.differences(reference, c)) if s is not reference else (None, None, 0)
                row += ["" if v is None else repr(v) for v in (mean, std)] + [n]
        writer.writerow(row)
    return out.getvalue()


def _cell(mean: float | None, std: float | None, scale: float, digits: int, signed: bool = False) -> str:
    if mean is None:
        return "–"
    text = f"{mean * scale:{'+' if signed else ''}.{digits}f}"
    return text if std is None else f"{text} ± {std * scale:.{digits}f}"


def to_markdown(plan: AblationPlan, summaries: list) -> str:
    columns = columns_of(summaries)
    seeds = ", ".join(map(str, plan.seeds))
    sel_column = selection_column(columns)
    order = (f"sorted by {label(sel_column)}, the selection metric at the selected epoch" if sel_column
             else "in grid order (no run selected an epoch)")
    lines = [
        f"Ablation {plan.grid.source} on {plan.cfg_file or 'the default config'}, made by:",
        "",
        "```",
        plan.command(),
        "```",
        "",
        f"Mean ± std over seeds {seeds}; metrics in %; test metrics from the final evaluation of "
        f"each run; {order}; "
        f"'–' marks a key a tie leaves at the base config's value.",
        "",
    ]
    labels = plan.grid.labels()
    header = [labels[k] for k in plan.grid.keys] + ["seeds"] + [label(c) for c in columns]
    lines.append("| " + " | ".join(header) + " |")
    lines.append("|" + "|".join([" --- "] * len(plan.grid.keys) + [" ---: "] * (1 + len(columns))) + "|")
    for s in summaries:
        cells = _grid_cells(plan, s, "–") + [str(len(s.seeds))]
        for c in columns:
            cells.append(_cell(s.mean(c), s.std(c), *_format(c)))
        lines.append("| " + " | ".join(cells) + " |")
    reference = reference_of(plan, summaries)
    if reference is not None:
        lines += _difference_table(plan, summaries, reference, columns, labels)
    return "\n".join(lines) + "\n"


def _format(column: str) -> tuple:
    """``(scale, digits)`` of a column in Markdown: percentages, seconds, attention as is."""
    if column == TIME_COLUMN:
        return 1.0, 1
    if column.startswith(ATTENTION_PREFIX):
        return 1.0, 4
    return 100.0, 2


def _difference_table(plan: AblationPlan, summaries: list, reference: PointSummary, columns: list,
                      labels: dict) -> list:
    """The Markdown lines of the paired differences to the reference point."""
    columns = [c for c in columns if c != TIME_COLUMN]
    lines = [
        "",
        f"Paired differences to the reference {reference.point.name} (this point minus the reference, "
        f"seed by seed): mean ± std over the n seeds both have; metrics in points (%).",
        "",
        "| " + " | ".join([labels[k] for k in plan.grid.keys] + ["n"] + ["Δ " + label(c) for c in columns]) + " |",
        "|" + "|".join([" --- "] * len(plan.grid.keys) + [" ---: "] * (1 + len(columns))) + "|",
    ]
    for s in summaries:
        if s is reference:
            continue
        stats = {c: paired(s.differences(reference, c)) for c in columns}
        n = max((v[2] for v in stats.values()), default=0)
        cells = _grid_cells(plan, s, "–") + [str(n)]
        for c in columns:
            mean, std, _ = stats[c]
            cells.append(_cell(mean, std, *_format(c), signed=True))
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def _hparam_value(value):
    if isinstance(value, (bool, int, float, str)):
        return value
    return json.dumps(value)


def hparam_metric(column: str) -> str:
    """The trainer's per-run hparams metric name of a column, so both line up in one view:
    ``test/recall@1`` -> ``test_recall@1``, ``best_val/recall@1`` -> ``val_recall@1``."""
    if column.startswith(SELECTION_PREFIX):
        column = column[len(SELECTION_PREFIX):]
    return column.replace("/", "_")


def write_hparams(plan: AblationPlan, summaries: list) -> str:
    """One hparams session per point under ``<output_dir>/hparams/<point>``; returns that folder."""
    from torch.utils.tensorboard import SummaryWriter
    from torch.utils.tensorboard.summary import hparams

    folder = os.path.join(plan.output_dir, "hparams")
    if os.path.isdir(folder):
        shutil.rmtree(folder)  # derived output only: rewriting it keeps one session per point
    columns = columns_of(summaries)
    domains = {}
    for key, values in plan.grid.values.items():
        if all(isinstance(v, str) for v in values):
            domains[key] = list(values)
    for s in summaries:
        hparam_dict = {k: _hparam_value(v) for k, v in s.point.values}
        hparam_dict["n_seeds"] = len(s.seeds)
        metric_dict = {}
        for c in columns:
            for suffix, value in (("", s.mean(c)), ("_std", s.std(c))):
                if value is not None and math.isfinite(value):
                    metric_dict[f"hparam/{hparam_metric(c)}{suffix}"] = value
        exp, ssi, sei = hparams(hparam_dict, metric_dict, {k: d for k, d in domains.items() if k in hparam_dict})
        with SummaryWriter(log_dir=os.path.join(folder, s.point.name)) as writer:
            for summary in (exp, ssi, sei):
                writer.file_writer.add_summary(summary)
            for name, value in metric_dict.items():
                writer.add_scalar(name, value)
    return folder


def write_reports(plan: AblationPlan, summaries: list) -> dict:
    """Write ``results.csv``, ``results.md`` and the hparams; returns their paths."""
    csv_path = os.path.join(plan.output_dir, "results.csv")
    md_path = os.path.join(plan.output_dir, "results.md")
    atomic_write_text(csv_path, to_csv(plan, summaries))
    atomic_write_text(md_path, to_markdown(plan, summaries))
    return {"csv": csv_path, "md": md_path, "hparams": write_hparams(plan, summaries)}
