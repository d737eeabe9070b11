"""The whole ablation with the real trainer on the digits at tiny settings."""
import csv
import json
import os
import statistics

import pytest

from ibc_geo.ablation import run_ablation

try:
    from ibc_geo.engine import train as real_train
except ImportError as e:  # pragma: no cover - only while ibc_geo.engine is being written
    real_train = None
    IMPORT_ERROR = str(e)

TINY = [
    "data.name", "digits", "data.image_size", "32", "data.resize_size", "32", "data.workers", "0",
    "data.random_erasing", "0.0", "data.val_classes", "0",
    "sampler.classes_per_batch", "3", "sampler.samples_per_class", "4",
    "model.backbone", "resnet18", "model.pretrained", "none", "model.embedding_dim", "32",
    "train.epochs", "1", "train.iters_per_epoch", "2", "train.lr_drop_epochs", "[]",
    "eval.selection", "test", "eval.recall_k", "[1, 2]", "eval.batch_size", "256", "eval.kmeans_iters", "5",
    "device", "cpu",
]


@pytest.mark.skipif(real_train is None, reason="ibc_geo.engine.train is not importable yet"
                    + (f" ({IMPORT_ERROR})" if real_train is None else ""))
def test_real_training_two_points_two_seeds(tmp_path, yaml_file):
    grid = yaml_file("grid.yaml", {"grid": {"graph.topology": ["none", "knn"], "graph.k": [4]},
                                   "tie": {"graph.k": {"graph.topology": ["knn"]}}, "seeds": [0, 1]})
    calls = []

    def counted(cfg):
        calls.append(cfg.output_dir)
        return real_train(cfg)

    out = tmp_path / "abl"
    result = run_ablation(None, grid, overrides=TINY + ["output_dir", str(out)], train_fn=counted)
    assert len(calls) == 4
    with open(out / "results.csv") as f:
        rows = {r["point"]: r for r in csv.DictReader(f)}
    assert set(rows) == {"topology=none", "topology=knn,k=4"}
    for name, row in rows.items():
        runs = [json.loads((out / name / f"seed={s}" / "metrics.json").read_text()) for s in (0, 1)]
        assert all(run["epochs"] == 1 for run in runs)
        for metric in ("recall@1", "recall@2", "map@r", "nmi"):
            values = [run["test"][metric] for run in runs]
            assert float(row[f"test/{metric}_mean"]) == pytest.approx(statistics.mean(values), abs=1e-12)
            assert float(row[f"test/{metric}_std"]) == pytest.approx(statistics.stdev(values), abs=1e-12)
        sel = [run["selection"]["best_value"] for run in runs]
        assert float(row["best_test/recall@1_mean"]) == pytest.approx(statistics.mean(sel), abs=1e-12)
    assert os.path.isfile(result.files["md"]) and os.path.isdir(out / "hparams" / "topology=none")

    calls.clear()
    again = run_ablation(None, grid, overrides=TINY + ["output_dir", str(out)], train_fn=counted)
    assert calls == [] and again.trained == []
