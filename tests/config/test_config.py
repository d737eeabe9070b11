"""The config system: overlay order, _BASE_ inheritance, shipped YAMLs, errors, round trip."""
import glob
import os
import subprocess
import sys

import pytest
import yaml

from ibc_geo.config import ConfigError, default_config, load_config, parse_overrides, save_config

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SHIPPED = sorted(glob.glob(os.path.join(ROOT, "configs", "*.yaml")))
TEST_SEL = ["eval.selection", "test"]


def write(path, data):
    path.write_text(yaml.safe_dump(data))
    return str(path)


def test_the_defaults_pass_their_own_checks():
    cfg = load_config()
    assert cfg.eval.selection == "val" and cfg.data.val_classes > 0


def test_defaults_are_the_schema():
    cfg = default_config()
    assert cfg.model.backbone == "resnet50" and cfg.graph.topology == "full"
    assert list(cfg.train.lr_drop_epochs) == [31, 51]


def test_overlay_order_defaults_yaml_command_line(tmp_path):
    f = write(tmp_path / "a.yaml", {"seed": 3, "graph": {"k": 7, "topology": "knn"}, "eval": {"selection": "test"}})
    cfg = load_config(f, ["graph.k", "5"])
    assert cfg.seed == 3  # from the file
    assert cfg.graph.k == 5  # the command line wins over the file
    assert cfg.graph.topology == "knn"
    assert cfg.mpn.num_heads == 2  # default where neither speaks


def test_base_inheritance_chain(tmp_path):
    write(tmp_path / "base.yaml", {"seed": 1, "mpn": {"num_heads": 4}, "eval": {"selection": "test"}})
    (tmp_path / "sub").mkdir()
    write(tmp_path / "sub" / "mid.yaml", {"_BASE_": "../base.yaml", "seed": 2, "loss": {"temperature": 0.5}})
    leaf = write(tmp_path / "sub" / "leaf.yaml", {"_BASE_": "mid.yaml", "loss": {"temperature": 0.3}})
    cfg = load_config(leaf)
    assert (cfg.seed, cfg.mpn.num_heads, cfg.loss.temperature) == (2, 4, 0.3)


def test_base_cycle_is_an_error(tmp_path):
    write(tmp_path / "a.yaml", {"_BASE_": "b.yaml"})
    write(tmp_path / "b.yaml", {"_BASE_": "a.yaml"})
    with pytest.raises(ConfigError, match="inherits itself"):
        load_config(str(tmp_path / "a.yaml"))


@pytest.mark.parametrize("path", SHIPPED, ids=os.path.basename)
def test_every_shipped_yaml_loads_and_passes_invariants(path):
    cfg = load_config(path)
    assert cfg.sampler.classes_per_batch * cfg.sampler.samples_per_class >= 4


@pytest.mark.parametrize("name,lr,p,k,layers,heads,t", [
    ("cub", 1.5637e-4, 6, 9, 1, 2, 0.2), ("cars", 3.6683e-4, 10, 7, 2, 8, 0.1111),
    ("sop", 2.4725e-4, 15, 6, 1, 8, 0.6047), ("inshop", 1.1266e-4, 14, 4, 1, 4, 0.1859)])
def test_benchmark_configs_hold_the_paper_settings(name, lr, p, k, layers, heads, t):
    cfg = load_config(os.path.join(ROOT, "configs", f"{name}.yaml"))
    assert cfg.data.name == name and cfg.train.lr == lr and cfg.loss.temperature == t
    assert (cfg.sampler.classes_per_batch, cfg.sampler.samples_per_class) == (p, k)
    assert (cfg.mpn.num_layers, cfg.mpn.num_heads) == (layers, heads)
    assert cfg.train.epochs == 70 and list(cfg.train.lr_drop_epochs) == [31, 51]
    assert cfg.model.backbone == "resnet50" and cfg.model.pooling == "max" and cfg.model.embedding_dim == 512


def test_unknown_key_on_command_line_suggests_closest():
    with pytest.raises(ConfigError) as e:
        load_config(None, TEST_SEL + ["graph.topolgy", "knn"])
    assert "graph.topolgy" in str(e.value) and "command line" in str(e.value) and "graph.topology" in str(e.value)


def test_unknown_key_in_file_names_the_file(tmp_path):
    f = write(tmp_path / "bad.yaml", {"train": {"epoch": 3}})
    with pytest.raises(ConfigError) as e:
        load_config(f)
    assert "train.epoch" in str(e.value) and str(f) in str(e.value) and "train.epochs" in str(e.value)


@pytest.mark.parametrize("override,fragment", [
    (["seed", "abc"], "seed"),
    (["train.lr_drop_epochs", "[x]"], "lr_drop_epochs"),
    (["graph.topology", "fully"], "allowed"),
    (["model.backbone", "vgg16"], "resnet50"),
    (["device", "tpu"], "auto, cpu, cuda"),
    (["sampler.batch_size", "50"], "6 x 9"),
    (["graph.topology", "knn", "graph.k", "54"], "graph.k"),
    (["mpn.num_heads", "5"], "divide"),
    (["model.pretrained", "/no/such/weights.pth"], "/no/such/weights.pth"),
    (["train.log_every", "0"], ">= 1"),
    (["eval.batch_size", "0"], ">= 1"),
    (["eval.chunk_size", "0"], ">= 1"),
    (["data.workers", "-1"], ">= 0"),
    (["train.lr_drop_factor", "0"], "(0, 1]"),
    (["loss.backbone_weight", "-1"], "'loss.backbone_weight': -1.0; must be >= 0"),
    (["loss.mpn_weight", "-0.5"], "'loss.mpn_weight': -0.5; must be >= 0"),
])
def test_bad_values_name_key_value_and_allowed(override, fragment):
    with pytest.raises(ConfigError) as e:
        load_config(None, TEST_SEL + override)
    assert fragment in str(e.value)


def test_val_selection_needs_val_classes():
    with pytest.raises(ConfigError, match="data.val_classes"):
        load_config(None, ["eval.selection", "val", "data.val_classes", "0"])


def test_missing_cfg_file():
    with pytest.raises(ConfigError, match="no/such.yaml"):
        load_config("no/such.yaml")


def test_odd_override_count():
    with pytest.raises(ConfigError, match="KEY VALUE"):
        parse_overrides(["graph.k"])


def test_saved_config_round_trip(tmp_path):
    cfg = load_config(os.path.join(ROOT, "configs", "sop.yaml"), ["graph.topology", "knn", "graph.k", "5"])
    save_config(cfg, tmp_path / "config.yaml")
    again = load_config(str(tmp_path / "config.yaml"))
    assert again == cfg


def test_config_is_read_only():
    cfg = load_config(None, TEST_SEL)
    with pytest.raises(Exception):
        cfg.seed = 5


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "ibc_geo.config", *args], capture_output=True, text=True, cwd=ROOT)


def test_module_cli_prints_resolved_config():
    r = run_cli("--cfg", "configs/sop.yaml", "graph.topology", "knn", "graph.k", "5")
    assert r.returncode == 0, r.stderr
    printed = yaml.safe_load(r.stdout)
    assert printed["graph"]["topology"] == "knn" and printed["graph"]["k"] == 5 and printed["data"]["name"] == "sop"


@pytest.mark.parametrize("args,fragment", [
    (["--cfg", "configs/sop.yaml", "graph.kk", "5"], "graph.k"),
    (["--cfg", "configs/sop.yaml", "seed", "x"], "seed"),
    (["--cfg", "configs/nope.yaml"], "configs/nope.yaml"),
])
def test_module_cli_exit_code_2(args, fragment):
    r = run_cli(*args)
    assert r.returncode == 2 and fragment in r.stderr and "Traceback" not in r.stderr


@pytest.mark.parametrize("tool", ["train.py", "eval.py", "ablate.py", "check_dataset.py"])
def test_every_tool_prints_config(tool):
    path = os.path.join(ROOT, "tools", tool)
    if not os.path.exists(path):
        pytest.fail(f"tools/{tool} is missing")
    extra = ["--grid", "configs/ablations/demo_topology.yaml"] if tool == "ablate.py" else []
    r = subprocess.run([sys.executable, path, "--cfg", "configs/demo.yaml", *extra, "--print-config", "seed", "7"],
                       capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 0, r.stderr
    assert yaml.safe_load(r.stdout)["seed"] == 7


def test_closed_choices_agree_with_the_modules_that_own_them():
    # schema.py stays a plain table of defaults; each closed set it lists is owned by a module.
    from ibc_geo.config import CHOICES
    from ibc_geo.data.dataset import EVAL_ON_CORRUPT, ON_CORRUPT
    from ibc_geo.data.sampler import EPOCH_LENGTHS
    from ibc_geo.graph import SIMILARITIES
    from ibc_geo.data.transforms import _INTERPOLATION
    from ibc_geo.evaluation.refine import METHODS, NEIGHBOURS
    from ibc_geo.nn.attention import PATHS
    from ibc_geo.nn.backbones import POOLINGS
    from ibc_geo.utils.runtime import AMP_DTYPES

    owners = {"model.pooling": POOLINGS, "data.interpolation": ("", *_INTERPOLATION),
              "eval.refine": METHODS, "eval.refine_neighbours": NEIGHBOURS,
              "graph.similarity": SIMILARITIES, "mpn.attention_path": PATHS,
              "train.amp_dtype": tuple(AMP_DTYPES), "data.on_corrupt": ON_CORRUPT,
              "sampler.epoch_length": EPOCH_LENGTHS, "eval.on_corrupt": EVAL_ON_CORRUPT}
    for key, values in owners.items():
        assert sorted(CHOICES[key]) == sorted(values), key


def test_tools_help_names_the_config_sections():
    from ibc_geo.cli.common import CONFIG_SECTIONS

    sections = [k for k, v in default_config().items() if hasattr(v, "items")]
    assert list(CONFIG_SECTIONS) == sections


@pytest.mark.parametrize("key, value, fragment", [
    ("train.lr", "nan", "'train.lr': nan; must be a finite number"),
    ("train.lr", "inf", "'train.lr': inf; must be a finite number"),
    ("train.lr", "0", "'train.lr': 0.0; must be > 0"),
    ("train.weight_decay", "-1e-4", "'train.weight_decay': -0.0001; must be >= 0"),
    ("loss.temperature", "-inf", "must be a finite number"),
    ("data.std", "[0.229, .nan, 0.225]", "'data.std'"),
])
def test_impossible_numbers_are_refused(key, value, fragment):
    with pytest.raises(ConfigError, match=re_escape(fragment)):
        load_config(None, [key, value])


def re_escape(text):
    import re

    return re.escape(text)
