"""Grid files: parsing, ties, expansion into points, names, and the errors of invalid grids."""
import pytest

from ibc_geo.ablation import GridError, load_grid, parse_grid
from ibc_geo.ablation.grid import format_value, override_value
from ibc_geo.config import ConfigError, load_config

TOPOLOGIES = ["none", "self", "random", "knn", "full", "same_class"]


def test_ties_keep_k_only_where_the_topology_uses_it():
    grid = parse_grid({
        "grid": {"graph.topology": TOPOLOGIES, "graph.k": [5, 10]},
        "tie": {"graph.k": {"graph.topology": ["knn", "random"]}},
        "seeds": [0, 1],
    })
    names = [p.name for p in grid.points()]
    assert names == ["topology=none", "topology=self", "topology=random,k=5", "topology=random,k=10",
                     "topology=knn,k=5", "topology=knn,k=10", "topology=full", "topology=same_class"]
    assert grid.seeds == [0, 1]
    knn10 = grid.points()[5]
    assert knn10.as_dict() == {"graph.topology": "knn", "graph.k": 10}
    assert knn10.overrides() == ["graph.topology", "knn", "graph.k", "10"]


def test_without_a_tie_every_combination_is_a_point():
    grid = parse_grid({"grid": {"graph.topology": ["knn", "full"], "mpn.num_heads": [1, 2]}})
    assert [p.name for p in grid.points()] == [
        "topology=knn,num_heads=1", "topology=knn,num_heads=2", "topology=full,num_heads=1", "topology=full,num_heads=2"]


def test_chained_ties():
    grid = parse_grid({
        "grid": {"graph.topology": ["full", "knn"], "graph.k": [3, 6], "mpn.num_layers": [1, 2]},
        "tie": {"graph.k": {"graph.topology": ["knn"]}, "mpn.num_layers": {"graph.k": [6]}},
    })
    assert [p.name for p in grid.points()] == [
        "topology=full", "topology=knn,k=3", "topology=knn,k=6,num_layers=1", "topology=knn,k=6,num_layers=2"]


def test_shared_last_components_use_the_full_key():
    grid = parse_grid({"grid": {"mpn.dropout": [0.0, 0.1], "graph.k": [4]}})
    assert grid.labels() == {"mpn.dropout": "dropout", "graph.k": "k"}
    grid = parse_grid({"grid": {"train.lr": [0.1], "eval.every": [1], "train.epochs": [2],
                                "train.lr_drop_epochs": [[1], []]}})
    assert [p.name for p in grid.points()] == ["lr=0.1,every=1,epochs=2,lr_drop_epochs=1",
                                              "lr=0.1,every=1,epochs=2,lr_drop_epochs=empty"]
    grid = parse_grid({"grid": {"model.pretrained": ["none"], "data.name": ["digits"],
                                "loss.label_smoothing": [0.1], "mpn.num_heads": [2]}})
    assert grid.labels()["model.pretrained"] == "pretrained"


def test_names_are_filesystem_safe_and_values_round_trip(base_cfg):
    assert format_value("/data/weights v1.pth") == "_data_weights_v1.pth"
    assert format_value([31, 51]) == "31_51" and format_value(True) == "true" and format_value(1e-4) == "0.0001"
    for value, key in ((True, "train.amp"), ("yes", "data.on_corrupt"), (1e-4, "train.lr"), ([3, 5], "train.lr_drop_epochs"),
                       ("knn", "graph.topology"), (7, "graph.k")):
        cfg = load_config(base_cfg, [key, override_value(value)], check=False)
        got = cfg
        for part in key.split("."):
            got = got[part]
        assert (list(got) if isinstance(value, list) else got) == value
    assert override_value("yes") == '"yes"' and override_value("knn") == "knn"


def test_load_grid_reads_a_file(yaml_file):
    path = yaml_file("g.yaml", {"grid": {"graph.topology": ["none", "full"]}})
    grid = load_grid(path)
    assert grid.source == f"grid file {path}" and grid.seeds is None
    assert [p.name for p in grid.points()] == ["topology=none", "topology=full"]


@pytest.mark.parametrize("data, expected", [
    ({"grid": {"graph.topolgy": ["knn"]}}, ["unknown config key 'graph.topolgy'", "graph.topology"]),
    ({"grid": {"mpn.num_head": [1]}}, ["unknown config key 'mpn.num_head'", "mpn.num_heads"]),
    ({"grids": {"graph.k": [1]}}, ["unknown section 'grids'", "did you mean 'grid'"]),
    ({"grid": {}}, ["needs a non-empty 'grid:'"]),
    ({"grid": {"graph": [1]}}, ["'graph' in G is a config section", "graph.k"]),
    ({"grid": {"graph.k": 5}}, ["'graph.k' in G must map to a non-empty list", "got 5"]),
    ({"grid": {"graph.k": []}}, ["must map to a non-empty list"]),
    ({"grid": {"graph.k": [5, 5]}}, ["lists the value 5 twice"]),
    ({"grid": {"seed": [0, 1]}}, ["'seed' in G cannot be varied by a grid", "seeds"]),
    ({"grid": {"output_dir": ["a"]}}, ["cannot be varied"]),
    ({"grid": {"eval.metric": ["recall@1", "map@r"]}}, ["cannot be varied", "selection metric"]),
    ({"grid": {"graph.k": [5]}, "tie": {"graph.k": {"graph.topology": ["knn"]}}},
     ["tied key 'graph.k' in G is tied to 'graph.topology', which 'grid:' does not vary"]),
    ({"grid": {"graph.topology": ["knn"]}, "tie": {"graph.k": {"graph.topology": ["knn"]}}},
     ["tied key 'graph.k' in G is not varied by 'grid:'"]),
    ({"grid": {"graph.topology": ["knn"], "graph.k": [5]}, "tie": {"graph.kk": {"graph.topology": ["knn"]}}},
     ["unknown config key 'graph.kk' as tied key", "graph.k"]),
    ({"grid": {"graph.topology": ["knn"], "graph.k": [5]}, "tie": {"graph.k": {"graph.topolgy": ["knn"]}}},
     ["unknown config key 'graph.topolgy' as parent of tied key 'graph.k'", "graph.topology"]),
    ({"grid": {"graph.topology": ["knn", "full"], "graph.k": [5]}, "tie": {"graph.k": {"graph.topology": ["knnn"]}}},
     ["lists 'graph.topology' value 'knnn'", "not among the grid's values", "did you mean 'knn'"]),
    ({"grid": {"graph.topology": ["knn"], "graph.k": [5]}, "tie": {"graph.k": {"graph.topology": []}}},
     ["must list values of 'graph.topology'"]),
    ({"grid": {"graph.topology": ["knn"], "graph.k": [5]}, "tie": {"graph.k": ["knn"]}},
     ["tie of 'graph.k' in G must map parent keys"]),
    ({"grid": {"graph.k": [5], "mpn.num_layers": [1]},
      "tie": {"graph.k": {"mpn.num_layers": [1]}, "mpn.num_layers": {"graph.k": [5]}}},
     ["form a cycle", "graph.k -> mpn.num_layers -> graph.k"]),
    ({"grid": {"graph.k": [5]}, "seeds": [0, 0]}, ["repeat a seed"]),
    ({"grid": {"graph.k": [5]}, "seeds": 3}, ["seeds in G must be a non-empty list"]),
    ({"grid": {"graph.k": [5]}, "seeds": [-1]}, ["non-negative integers"]),
    ([1, 2], ["G must hold a mapping"]),
])
def test_invalid_grids_are_rejected_with_a_clear_message(data, expected):
    with pytest.raises(GridError) as info:
        parse_grid(data, source="G")
    assert isinstance(info.value, ConfigError) and info.value.exit_code == 2
    for text in expected:
        assert text in str(info.value)


def test_grid_file_errors_name_the_file(tmp_path, yaml_file):
    path = yaml_file("bad.yaml", {"grid": {"graph.topolgy": ["knn"]}})
    with pytest.raises(GridError, match=f"in grid file {path}"):
        load_grid(path)
    with pytest.raises(GridError, match="grid file not found"):
        load_grid(str(tmp_path / "missing.yaml"))
    (tmp_path / "broken.yaml").write_text("grid: [unclosed\n")
    with pytest.raises(GridError, match="not valid YAML"):
        load_grid(str(tmp_path / "broken.yaml"))


def test_values_that_collide_once_made_safe_are_rejected():
    with pytest.raises(GridError, match="same folder name 'pretrained=a_b'"):
        parse_grid({"grid": {"model.pretrained": ["a/b", "a b"]}}, source="G").points()
