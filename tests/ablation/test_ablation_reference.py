"""Explicit 'points:' grids and the paired differences to a 'reference:' point, with a fake training."""
import csv
import json
import os
import statistics

import pytest

from ibc_geo.ablation import GridError, run_ablation
from ibc_geo.ablation.grid import parse_grid

POINTS = {"points": [{"graph.topology": "none"}, {"graph.topology": "full"},
                     {"graph.topology": "knn", "graph.k": 5}],
          "seeds": [0, 1, 2], "reference": {"graph.topology": "none"}}


def test_points_are_the_listed_ones_named_by_their_own_keys():
    points = parse_grid(POINTS).points()
    assert [p.name for p in points] == ["topology=none", "topology=full", "topology=knn,k=5"]
    assert points[2].overrides() == ["graph.topology", "knn", "graph.k", "5"]
    # Appending a point with a new key keeps the names (and so the finished runs) of the others.
    more = dict(POINTS, points=POINTS["points"] + [{"graph.topology": "full", "mpn.attention_logits": "cosine"}])
    names = [p.name for p in parse_grid(more).points()]
    assert names[:3] == ["topology=none", "topology=full", "topology=knn,k=5"]
    assert names[3] == "topology=full,attention_logits=cosine"


@pytest.mark.parametrize("data, words", [
    ({"points": []}, "non-empty list of mappings"),
    ({"points": [{"graph.topology": "none"}, {"graph.topology": "none"}]}, "point 2 of a grid repeats point 1"),
    ({"points": [{"graph.topologyy": "none"}]}, "unknown config key 'graph.topologyy'"),
    ({"points": [{"graph.topology": "none"}], "grid": {"graph.k": [1]}}, "both 'points:' and 'grid:'"),
    ({"points": [{"graph.topology": "none"}], "reference": {"graph.topology": "full"}}, "is not one of its points"),
    ({"grid": {"graph.topology": ["none", "full"]}, "reference": {"graph.topology": "knn"}}, "is not one of its points"),
    ({"grid": {"graph.topology": ["none"]}, "reference": "none"}, "'reference:' in a grid must map config keys"),
])
def test_bad_points_and_references_are_named(data, words):
    with pytest.raises(GridError) as info:
        parse_grid(data)
    assert words in str(info.value)


def test_report_gives_paired_differences_to_the_reference(tmp_path, base_cfg, yaml_file, fake_train):
    train = fake_train()
    run_ablation(base_cfg, yaml_file("p.yaml", POINTS), train_fn=train)
    root = str(tmp_path / "ablations" / "p")
    with open(os.path.join(root, "results.csv")) as f:
        rows = {r["point"]: r for r in csv.DictReader(f)}

    def metric(point, seed, key):
        m = json.load(open(os.path.join(root, point, f"seed={seed}", "metrics.json")))
        return m["test"][key]

    for point in ("topology=full", "topology=knn,k=5"):
        row = rows[point]
        assert row["reference"] == "topology=none"
        for key in ("map@r", "nmi", "recall@1"):
            diffs = [metric(point, s, key) - metric("topology=none", s, key) for s in (0, 1, 2)]
            assert float(row[f"test/{key}_diff_mean"]) == pytest.approx(statistics.mean(diffs), abs=1e-12)
            assert float(row[f"test/{key}_diff_std"]) == pytest.approx(statistics.stdev(diffs), abs=1e-12)
            assert row[f"test/{key}_diff_n"] == "3"
    assert rows["topology=none"]["test/map@r_diff_mean"] == ""  # the reference itself
    md = open(os.path.join(root, "results.md")).read()
    assert "Paired differences to the reference topology=none" in md
    diffs = [metric("topology=full", s, "map@r") - metric("topology=none", s, "map@r") for s in (0, 1, 2)]
    cell = f"{100 * statistics.mean(diffs):+.2f} ± {100 * statistics.stdev(diffs):.2f}"
    line = next(line for line in md.split("Paired differences")[1].splitlines() if line.startswith("| full |"))
    assert cell in line


def test_report_tabulates_each_layers_attention(tmp_path, base_cfg, yaml_file, fake_train):
    """metrics.json's 'attention' (one dict per layer) becomes columns; runs without it (no MPN) leave them empty."""

    train = fake_train()
    original = train.__call__

    def call(cfg):
        metrics = original(cfg)
        if cfg.graph.topology != "none":
            metrics["attention"] = [{"same_class": 0.1 + 0.01 * cfg.seed, "same_class_uniform": 0.08,
                                     "entropy": 2.0, "entropy_uniform": 2.5, "logit_std": 0.3 * (1 + cfg.seed),
                                     "mass_on_nodes": 0.9}]
            with open(os.path.join(cfg.output_dir, "metrics.json"), "w") as f:
                json.dump(metrics, f)
        return metrics

    run_ablation(base_cfg, yaml_file("a.yaml", POINTS), train_fn=call)
    root = str(tmp_path / "ablations" / "a")
    with open(os.path.join(root, "results.csv")) as f:
        rows = {r["point"]: r for r in csv.DictReader(f)}
    assert float(rows["topology=full"]["attention/layer0/same_class_mean"]) == pytest.approx(0.11)
    assert float(rows["topology=full"]["attention/layer0/logit_std_mean"]) == pytest.approx(0.6)
    assert rows["topology=none"]["attention/layer0/same_class_mean"] == ""
    md = open(os.path.join(root, "results.md")).read()
    assert "same-class L0" in md and "chance L0" in md and "logit std L0" in md


def test_two_values_that_read_as_one_config_value_are_refused(base_cfg, yaml_file, fake_train):
    """YAML 1.1 reads 1e-3 as a string and 0.001 as a float: distinct grid values, one config."""
    from ibc_geo.ablation import plan_ablation

    grid = yaml_file("lr.yaml", {"grid": {"train.lr": ["1e-3", 0.001]}})
    with pytest.raises(GridError) as info:
        plan_ablation(base_cfg, grid)
    assert "lr=0.001: builds the same config as point 'lr=1e-3'" in str(info.value)
    train = fake_train()
    with pytest.raises(GridError):
        run_ablation(base_cfg, grid, train_fn=train)
    assert train.calls == []


def test_a_wrong_typed_grid_value_names_the_point_and_the_grid_file(base_cfg, yaml_file):
    from ibc_geo.ablation import plan_ablation

    grid = yaml_file("typ.yaml", {"grid": {"train.epochs": ["two"]}})
    with pytest.raises(GridError) as info:
        plan_ablation(base_cfg, grid)
    message = str(info.value)
    assert "in point 'epochs=two' of grid file" in message and "typ.yaml" in message
    assert "command line" not in message
