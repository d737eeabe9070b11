"""The shipped ablation grids parse, name their base config, and every point of theirs is valid."""
import glob
import os
import re

import pytest

from ibc_geo.ablation import load_grid, plan_ablation

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
GRIDS = sorted(glob.glob(os.path.join(ROOT, "configs", "ablations", "*.yaml")))
BENCHMARKS = ["cub", "cars", "sop", "inshop"]


def base_of(grid_path):
    """The --cfg of the command in the grid file's header comment."""
    header = open(grid_path, encoding="utf-8").read()
    match = re.search(r"python tools/ablate\.py --cfg (\S+) --grid (\S+)", header)
    assert match, f"{grid_path} has no 'python tools/ablate.py --cfg BASE --grid GRID' command in its header"
    assert match.group(2) == os.path.relpath(grid_path, ROOT), f"{grid_path}'s header command names another grid"
    return os.path.join(ROOT, match.group(1))


def test_every_benchmark_and_the_demo_have_a_topology_ablation():
    names = {os.path.basename(p) for p in GRIDS}
    assert {f"{b}_topology.yaml" for b in BENCHMARKS + ["demo"]} <= names


@pytest.mark.parametrize("path", GRIDS, ids=os.path.basename)
def test_shipped_grid_is_valid_for_its_base_config(path, tmp_path):
    base = base_of(path)
    assert os.path.isfile(base), f"{path} names base config {base}, which does not exist"
    # One seed suffices: no config invariant depends on the seed, and each run costs a config load.
    plan = plan_ablation(base, path, seeds=[0], overrides=["output_dir", str(tmp_path)])
    assert all(run.status == "new" for run in plan.runs)
    topologies = {run.cfg.graph.topology for run in plan.runs}
    # every grid compares the MPN with its absence; the topology grids also sparse graphs
    assert {"none", "full"} <= topologies
    if path.endswith("_topology.yaml") or os.path.basename(path) == "mpn_attention.yaml":
        assert "knn" in topologies
    for run in plan.runs:  # ties: k only where the topology uses it, the threshold only for threshold
        values = run.point.as_dict()
        assert ("graph.k" in values) == (values["graph.topology"] in ("knn", "random"))
        assert ("graph.threshold" in values) == (values["graph.topology"] == "threshold")


@pytest.mark.parametrize("bench", BENCHMARKS)
def test_benchmark_topology_ablation(bench):
    grid = load_grid(os.path.join(ROOT, "configs", "ablations", f"{bench}_topology.yaml"))
    assert len(grid.points()) == 13 and len(grid.seeds) == 3


def test_demo_ablation_covers_the_topologies_of_the_readme():
    path = os.path.join(ROOT, "configs", "ablations", "demo_topology.yaml")
    grid = load_grid(path)
    assert set(grid.values["graph.topology"]) >= {"none", "self", "random", "knn", "full", "same_class"}
    assert len(grid.seeds) >= 2
    assert base_of(path) == os.path.join(ROOT, "configs", "demo.yaml")
