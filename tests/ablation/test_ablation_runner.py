"""The runner with a fake training: runs and folders, the table, skip and resume, fail-fast checks, the CLI."""
import csv
import importlib.util
import json
import os
import statistics

import pytest

from ibc_geo.ablation import AblationError, GridError, format_plan, plan_ablation, run_ablation
from ibc_geo.config import ConfigError

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
GRID = {"grid": {"graph.topology": ["knn", "full"], "graph.k": [5]},
        "tie": {"graph.k": {"graph.topology": ["knn"]}}, "seeds": [0, 1]}
RUNS = ["topology=knn,k=5/seed=0", "topology=full/seed=0", "topology=knn,k=5/seed=1", "topology=full/seed=1"]


def run_names(root, calls):
    return [os.path.relpath(out, root) for out, _, _ in calls]


def test_two_points_two_seeds_make_four_runs_and_a_matching_table(tmp_path, base_cfg, yaml_file, fake_train):
    train = fake_train()
    result = run_ablation(base_cfg, yaml_file("g.yaml", GRID), train_fn=train)
    root = str(tmp_path / "ablations" / "g")
    assert run_names(root, train.calls) == RUNS  # seed by seed, points in grid order
    assert all(not resume and not overwrite for _, resume, overwrite in train.calls)
    for name in RUNS:
        assert os.path.isfile(os.path.join(root, name, "metrics.json"))
    assert result.trained == RUNS and result.files["csv"] == os.path.join(root, "results.csv")

    with open(os.path.join(root, "results.csv")) as f:
        rows = list(csv.DictReader(f))
    # sorted by the selection metric, best first: the fake makes full better than knn (grid order)
    assert [r["point"] for r in rows] == ["topology=full", "topology=knn,k=5"]
    assert float(rows[0]["best_test/recall@1_mean"]) > float(rows[1]["best_test/recall@1_mean"])
    md = open(os.path.join(root, "results.md")).read()
    for row in rows:
        runs = [json.load(open(os.path.join(root, row["point"], f"seed={s}", "metrics.json"))) for s in (0, 1)]
        assert row["n_seeds"] == "2" and row["seeds"] == "0 1"
        columns = {f"test/{m}": [r["test"][m] for r in runs] for m in ("recall@1", "recall@2", "recall@4", "nmi", "map@r")}
        columns["best_test/recall@1"] = [r["selection"]["best_value"] for r in runs]
        columns["train_time_s"] = [r["train_time_s"] for r in runs]
        for column, values in columns.items():
            assert float(row[f"{column}_mean"]) == pytest.approx(statistics.mean(values), rel=1e-12, abs=1e-15)
            assert float(row[f"{column}_std"]) == pytest.approx(statistics.stdev(values), rel=1e-12, abs=1e-15)
        r1 = [r["test"]["recall@1"] for r in runs]
        cell = f"{100 * statistics.mean(r1):.2f} ± {100 * statistics.stdev(r1):.2f}"
        md_row = next(line for line in md.splitlines() if line.startswith(f"| {row['graph.topology']} |"))
        assert cell in md_row
    assert [r["graph.k"] for r in rows] == ["", "5"]
    assert "| topology | k | seeds | test R@1 (best) | R@1 | R@2 | R@4 | NMI | MAP@R | train time (s) |" in md
    assert "| full | – | 2 |" in md
    assert "--grid" in md and "sorted by test R@1 (best)" in md
    # one line per point, best first
    table = [line for line in md.splitlines() if line.startswith("| full") or line.startswith("| knn")]
    assert [line.split(" | ")[0] for line in table] == ["| full", "| knn"]


def test_hparams_hold_the_mean_of_each_point(tmp_path, base_cfg, yaml_file, fake_train, metrics_of):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    result = run_ablation(base_cfg, yaml_file("g.yaml", GRID), train_fn=fake_train())
    for summary in result.summaries:
        folder = os.path.join(str(tmp_path / "ablations" / "g"), "hparams", summary.point.name)
        events = EventAccumulator(folder)
        events.Reload()
        tags = events.Tags()["scalars"]
        assert "hparam/test_recall@1" in tags and "hparam/test_recall@1_std" in tags and "hparam/test_recall@1" in tags
        got = events.Scalars("hparam/test_map@r")[0].value
        assert got == pytest.approx(summary.mean("test/map@r"), rel=1e-6)
        assert events.Scalars("hparam/train_time_s")[0].value == pytest.approx(summary.mean("train_time_s"), rel=1e-6)
    # rerunning rewrites the hparams instead of adding a second session per point
    run_ablation(base_cfg, yaml_file("g.yaml", GRID), train_fn=fake_train())
    folder = os.path.join(str(tmp_path / "ablations" / "g"), "hparams", "topology=full")
    assert len([f for f in os.listdir(folder) if f.startswith("events.out.tfevents")]) == 1


def test_killed_ablation_resumes_without_redoing_finished_runs(tmp_path, base_cfg, yaml_file, fake_train):
    grid = yaml_file("g.yaml", GRID)
    root = str(tmp_path / "ablations" / "g")
    first = fake_train(kill_at=2)
    with pytest.raises(fake_train.Killed):
        run_ablation(base_cfg, grid, train_fn=first)
    assert run_names(root, first.calls) == RUNS[:2]
    assert not os.path.exists(os.path.join(root, "results.csv"))
    plan = plan_ablation(base_cfg, grid)
    assert [(r.name, r.status) for r in plan.runs] == [
        (RUNS[0], "done"), (RUNS[1], "resume"), (RUNS[2], "new"), (RUNS[3], "new")]

    second = fake_train()
    result = run_ablation(base_cfg, grid, train_fn=second)
    assert run_names(root, second.calls) == RUNS[1:]  # the first run is not trained again
    assert [resume for _, resume, _ in second.calls] == [True, False, False]
    assert result.trained == RUNS[1:]
    with open(os.path.join(root, "results.csv")) as f:
        assert [r["n_seeds"] for r in csv.DictReader(f)] == ["2", "2"]

    third = fake_train()
    run_ablation(base_cfg, grid, train_fn=third)
    assert third.calls == []  # all done: only the table is rebuilt


def test_run_folder_without_checkpoint_is_restarted(tmp_path, base_cfg, yaml_file, fake_train):
    folder = tmp_path / "ablations" / "g" / "topology=full" / "seed=0"
    folder.mkdir(parents=True)
    (folder / "log.txt").write_text("died in epoch 1\n")
    train = fake_train()
    run_ablation(base_cfg, yaml_file("g.yaml", GRID), seeds=[0], train_fn=train)
    assert train.calls == [(str(folder.parent.parent / "topology=knn,k=5" / "seed=0"), False, False),
                           (str(folder), False, True)]


def test_dry_run_lists_points_and_trains_nothing(tmp_path, base_cfg, yaml_file, fake_train):
    grid = yaml_file("g.yaml", GRID)
    train = fake_train(kill_at=2)
    with pytest.raises(fake_train.Killed):
        run_ablation(base_cfg, grid, train_fn=train)
    before = sorted(os.walk(tmp_path / "ablations" / "g"))
    idle = fake_train()
    result = run_ablation(base_cfg, grid, dry_run=True, train_fn=idle)
    assert idle.calls == [] and result.summaries == [] and result.files == {}
    assert sorted(os.walk(tmp_path / "ablations" / "g")) == before
    text = format_plan(result.plan)
    assert "2 points x 2 seeds = 4 runs" in text
    assert "done     topology=knn,k=5/seed=0" in text and "resume   topology=full/seed=0" in text
    assert "graph.topology knn graph.k 5" in text
    assert "1 done, 1 to resume, 0 to restart (no checkpoint yet), 2 to start" in text


def test_seeds_argument_and_defaults(tmp_path, base_cfg, yaml_file):
    no_seeds = {k: v for k, v in GRID.items() if k != "seeds"}
    assert plan_ablation(base_cfg, yaml_file("a.yaml", GRID), seeds=[3, 4, 5]).seeds == [3, 4, 5]
    assert plan_ablation(base_cfg, yaml_file("b.yaml", no_seeds)).seeds == [0]  # the config's seed
    plan = plan_ablation(base_cfg, yaml_file("b.yaml", no_seeds), seeds=[2])
    assert [r.cfg.seed for r in plan.runs] == [2, 2]
    assert plan.runs[0].cfg.output_dir == str(tmp_path / "ablations" / "b" / "topology=knn,k=5" / "seed=2")
    assert "--seeds 2" in plan.command()
    with pytest.raises(GridError, match="repeat a seed"):
        plan_ablation(base_cfg, yaml_file("b.yaml", no_seeds), seeds=[1, 1])


def test_overrides_apply_to_every_run(tmp_path, base_cfg, yaml_file):
    out = str(tmp_path / "elsewhere")
    plan = plan_ablation(base_cfg, yaml_file("g.yaml", GRID), overrides=["train.epochs", "3", "output_dir", out])
    assert {r.cfg.train.epochs for r in plan.runs} == {3}
    assert plan.output_dir == out and all(r.run_dir.startswith(out) for r in plan.runs)


@pytest.mark.parametrize("grid, overrides, expected", [
    ({"grid": {"graph.topology": ["full", "knn"], "graph.k": [5, 12]}, "tie": {"graph.k": {"graph.topology": ["knn"]}}},
     [], ["1 of 3 points", "topology=knn,k=12", "graph.k", "must be in [1, batch size) = [1, 12)", "nothing was trained"]),
    ({"grid": {"graph.topology": ["full", "knnn"]}}, [], ["topology=knnn", "graph.topology", "did you mean 'knn'"]),
    ({"grid": {"graph.topology": ["full", "knn"], "graph.k": [5]}}, [],
     ["topology=full,k=5", "varies 'graph.k', which has no effect when 'graph.topology' is 'full'",
      "tie: {graph.k: {graph.topology: [knn]}}"]),
    ({"grid": {"graph.topology": ["none", "knn"], "mpn.num_heads": [1, 2]}}, [],
     ["topology=none,num_heads=1", "no effect when 'graph.topology' is 'none'"]),
    ({"grid": {"graph.k": [4, 8]}}, [], ["no effect when 'graph.topology' is 'full'", "set 'graph.topology' in the base"]),
    ({"grid": {"mpn.num_heads": [3]}}, [], ["must divide model.embedding_dim"]),
    ({"grid": {"graph.k": [4]}}, ["graph.k", "5"], ["override 'graph.k' on the command line is varied by"]),
    ({"grid": {"mpn.num_heads": [1]}}, ["seed", "5"], ["override 'seed'", "--seeds"]),
    ({"grid": {"mpn.num_heads": [1]}}, ["graph.topolgy", "knn"], ["unknown config key 'graph.topolgy'"]),
])
def test_invalid_points_fail_before_any_training(tmp_path, base_cfg, yaml_file, fake_train, grid, overrides, expected):
    train = fake_train()
    with pytest.raises(ConfigError) as info:  # GridError or ConfigError: exit code 2
        run_ablation(base_cfg, yaml_file("g.yaml", grid), overrides=overrides, train_fn=train)
    assert train.calls == [] and not os.path.exists(tmp_path / "ablations" / "g")
    for text in expected:
        assert text in str(info.value)


def test_changed_config_of_finished_runs_is_an_error(tmp_path, base_cfg, yaml_file, fake_train):
    grid = yaml_file("g.yaml", GRID)
    run_ablation(base_cfg, grid, seeds=[0], train_fn=fake_train())
    train = fake_train()
    with pytest.raises(AblationError) as info:
        run_ablation(base_cfg, grid, seeds=[0], overrides=["train.epochs", "5"], train_fn=train)
    assert train.calls == []
    assert "train.epochs: 70 -> 5" in str(info.value) and "topology=full/seed=0 (done)" in str(info.value)


def test_training_that_writes_no_metrics_is_an_error(base_cfg, yaml_file):
    with pytest.raises(AblationError, match="returned without writing .*metrics.json"):
        run_ablation(base_cfg, yaml_file("g.yaml", GRID), train_fn=lambda cfg: {})


def load_tool():
    spec = importlib.util.spec_from_file_location("ablate_tool", os.path.join(ROOT, "tools", "ablate.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_cli_dry_run_seeds_and_overrides(tmp_path, base_cfg, yaml_file, capsys):
    tool = load_tool()
    assert tool.split_seeds(["0", "1", "train.epochs", "2"]) == ([0, 1], ["train.epochs", "2"])
    grid = yaml_file("g.yaml", GRID)
    tool.main(["--cfg", base_cfg, "--grid", grid, "--dry-run", "--seeds", "0", "7", "train.epochs", "2"])
    out = capsys.readouterr().out
    assert "2 points x 2 seeds = 4 runs" in out and "topology=knn,k=5/seed=7" in out
    assert "--seeds 0 7 train.epochs 2" in out
    assert not os.path.exists(tmp_path / "ablations" / "g")


def test_cli_reports_an_invalid_grid_with_exit_code_2(tmp_path, base_cfg, yaml_file):
    import subprocess
    import sys

    grid = yaml_file("g.yaml", {"grid": {"graph.topolgy": ["knn"]}})
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "tools", "ablate.py"), "--cfg", base_cfg,
                           "--grid", grid, "--dry-run"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr
    assert "error: unknown config key 'graph.topolgy' as grid key in grid file" in proc.stderr
    assert "graph.topology" in proc.stderr and "Traceback" not in proc.stderr


def test_without_output_dir_the_runs_stay_out_of_the_base_run_folder(tmp_path, base_cfg, yaml_file):
    plan = plan_ablation(base_cfg, yaml_file("g.yaml", GRID))
    assert plan.output_dir == str(tmp_path / "ablations" / "g")
    assert all(not r.run_dir.startswith(str(tmp_path / "abl") + os.sep) for r in plan.runs)
    given = plan_ablation(base_cfg, yaml_file("g.yaml", GRID), overrides=["output_dir", str(tmp_path / "mine")])
    assert given.output_dir == str(tmp_path / "mine")
    demo = plan_ablation(os.path.join(ROOT, "configs", "demo.yaml"),
                         os.path.join(ROOT, "configs", "ablations", "demo_topology.yaml"))
    assert demo.output_dir == os.path.join("output", "ablations", "demo_topology")
