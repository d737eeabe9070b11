"""The MPN variant keys: documented defaults (the official recipe), refused where no MPN runs, and
bad scales named in one line, by the config loader and by tools/train.py."""
import pytest

from ibc_geo.cli import run
from ibc_geo.cli import train as train_tool
from ibc_geo.config import ConfigError, default_config, load_config
from ibc_geo.graph import MPN_VARIANT_KEYS


def test_the_defaults_are_the_official_recipe():
    mpn = default_config().mpn
    assert (mpn.attention_logits, mpn.attention_scale_init, mpn.attention_qk_init, mpn.input_scale) == (
        "dot", 10.0, "independent", 1.0)
    assert set(MPN_VARIANT_KEYS) == {"mpn.attention_logits", "mpn.attention_scale_init",
                                     "mpn.attention_qk_init", "mpn.input_scale"}


@pytest.mark.parametrize("key, value", [("mpn.attention_logits", "cosine"), ("mpn.input_scale", "22.6"),
                                        ("mpn.attention_qk_init", "shared"), ("mpn.attention_scale_init", "5")])
def test_a_variant_key_on_a_topology_without_message_passing_is_refused(key, value):
    with pytest.raises(ConfigError) as info:
        load_config("configs/demo.yaml", ["graph.topology", "none", key, value])
    assert f"config key {key!r}" in str(info.value) and "has no effect for topology 'none'" in str(info.value)
    for topology in ("full", "self", "knn"):  # every topology with message passing takes it
        assert load_config("configs/demo.yaml", ["graph.topology", topology, key, value])


@pytest.mark.parametrize("key, value, words", [
    ("mpn.input_scale", "0", "must be a finite number > 0"),
    ("mpn.input_scale", "-3", "must be a finite number > 0"),
    ("mpn.input_scale", ".nan", "must be a finite number"),
    ("mpn.attention_scale_init", "0", "must be a finite number > 0"),
    ("mpn.attention_scale_init", ".inf", "must be a finite number"),
    ("mpn.attention_scale_init", "150", "at most 100"),
    ("mpn.attention_logits", "cos", "allowed: dot, cosine"),
])
def test_a_bad_variant_value_is_one_line_naming_the_key(key, value, words, capsys, tmp_path):
    with pytest.raises(ConfigError, match=words):
        load_config("configs/demo.yaml", [key, value])
    code = run(train_tool.main, ["--cfg", "configs/demo.yaml", "output_dir", str(tmp_path / "r"), key, value])
    err = capsys.readouterr().err
    assert code == 2 and key in err and "Traceback" not in err
    assert len([line for line in err.splitlines() if line.strip()]) == 1
    assert not (tmp_path / "r").exists()


def test_input_scale_needs_the_normalised_input():
    with pytest.raises(ConfigError, match="needs mpn.input_norm true"):
        load_config("configs/demo.yaml", ["mpn.input_norm", "false", "mpn.input_scale", "2"])
