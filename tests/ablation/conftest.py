import json
import os

import pytest
import yaml

from ibc_geo.config import save_config

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TOPOLOGY_ORDER = ["none", "self", "random", "knn", "threshold", "full", "same_class"]


@pytest.fixture(autouse=True)
def digits_registered(monkeypatch):
    """The config checker needs ``digits`` in the dataset registry. The runner never loads data
    (the fake trainings below do not), so until ``ibc_geo.data`` registers it, a placeholder
    stands in for this test only."""
    from ibc_geo.utils.registry import Registry

    try:
        from ibc_geo.data import DATASETS
    except ImportError:
        from ibc_geo.data.registry import DATASETS
    assert isinstance(DATASETS, Registry)
    if "digits" not in DATASETS:
        monkeypatch.setitem(DATASETS._items, "digits", object)


def write_yaml(path, data):
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return str(path)


@pytest.fixture
def base_cfg(tmp_path):
    """A base config: batch 3 x 4 = 12, test-split selection, its own output_dir tmp_path/abl (an
    ablation of grid g.yaml without an output_dir override lands in tmp_path/ablations/g)."""
    return write_yaml(tmp_path / "base.yaml", {
        "output_dir": str(tmp_path / "abl"),
        "data": {"name": "digits", "val_classes": 0},
        "sampler": {"classes_per_batch": 3, "samples_per_class": 4},
        "model": {"pretrained": "none"},
        "eval": {"selection": "test", "recall_k": [1, 2, 4]},
    })


def fake_metrics(cfg):
    """Deterministic metrics of a config: better with a later topology in TOPOLOGY_ORDER and with k."""
    t = TOPOLOGY_ORDER.index(cfg.graph.topology) if cfg.graph.topology in TOPOLOGY_ORDER else 0
    base = 0.30 + 0.05 * t + 0.001 * cfg.graph.k + 0.013 * cfg.seed * (1 + t % 3)
    test = {f"recall@{k}": min(1.0, base + 0.02 * i) for i, k in enumerate(cfg.eval.recall_k)}
    test.update({"map@r": base / 3 + 0.002 * cfg.seed, "nmi": 0.5 + 0.01 * t - 0.003 * cfg.seed,
                 "r_precision": base / 2, "precision@1": base, "num_queries": 100})
    return {
        "dataset": cfg.data.name,
        "epochs": cfg.train.epochs,
        "train_time_s": 10.0 + t + 0.5 * cfg.seed,
        "test": test,
        "selection": {"split": cfg.eval.selection, "metric": cfg.eval.metric, "best_value": test["recall@1"] - 0.01,
                      "best_epoch": 1, "history": [{"epoch": 1, "recall@1": test["recall@1"] - 0.01}]},
    }


class Killed(BaseException):
    """Stands in for a kill (SIGINT/SIGKILL): not an Exception, so nothing swallows it."""


class FakeTrain:
    """Writes what the trainer writes (config.yaml, checkpoints/last.pt, metrics.json) and records
    each call; ``kill_at=n`` saves a checkpoint on the n-th call (1-based) and then dies."""

    Killed = Killed

    def __init__(self, kill_at=None):
        self.kill_at = kill_at
        self.calls = []  # (output_dir, resume, overwrite)

    def __call__(self, cfg):
        self.calls.append((cfg.output_dir, cfg.train.resume, cfg.train.overwrite))
        out = cfg.output_dir
        os.makedirs(os.path.join(out, "checkpoints"), exist_ok=True)
        if os.path.exists(os.path.join(out, "checkpoints", "last.pt")):
            assert cfg.train.resume, f"{out} holds a checkpoint but train.resume is off"
        save_config(cfg, os.path.join(out, "config.yaml"))
        with open(os.path.join(out, "checkpoints", "last.pt"), "w") as f:
            f.write("epoch 1")
        if len(self.calls) == self.kill_at:
            raise Killed(out)
        metrics = fake_metrics(cfg)
        with open(os.path.join(out, "metrics.json"), "w") as f:
            json.dump(metrics, f)
        return metrics


@pytest.fixture
def fake_train():
    """``fake_train(kill_at=None)`` -> a :class:`FakeTrain`."""
    return FakeTrain


@pytest.fixture
def yaml_file(tmp_path):
    """``yaml_file(name, data)`` writes ``tmp_path/name`` and returns its path."""
    return lambda name, data: write_yaml(tmp_path / name, data)


@pytest.fixture
def metrics_of():
    """The metrics a FakeTrain writes for a config."""
    return fake_metrics
