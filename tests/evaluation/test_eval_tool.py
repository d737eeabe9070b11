"""tools/eval.py on saved embeddings (no model): table, JSON, defaults, In-Shop mask, errors."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from ibc_geo.evaluation import evaluate_embeddings
from ibc_geo.cli import eval as eval_tool
from ibc_geo.cli import run


def main(argv):
    """The tool as its entry point runs it: a user error becomes its exit code."""
    return run(eval_tool.main, argv)

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture
def saved(tmp_path):
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 12, 150)
    emb = (rng.standard_normal((150, 8)) + 2 * rng.standard_normal((12, 8))[labels]).astype(np.float32)
    np.save(tmp_path / "E.npy", emb)
    np.save(tmp_path / "L.npy", labels)
    return tmp_path, emb, labels


def test_embeddings_mode_writes_metrics_beside_them(saved, capsys):
    tmp, emb, labels = saved
    assert main(["--embeddings", str(tmp / "E.npy"), "--labels", str(tmp / "L.npy"), "--recall-k", "1", "5"]) == 0
    assert not (tmp / "metrics.json").exists()  # a run's own record, never written by evaluation
    record = json.loads((tmp / "metrics_E.json").read_text())
    want = evaluate_embeddings(emb, labels, recall_k=(1, 5), nmi=True, kmeans_iters=20, seed=0)
    for key, value in want.items():
        assert record[key] == pytest.approx(value, abs=1e-12), key
    assert record["num_items"] == 150 and record["num_classes"] == 12
    assert "dataset" in record and "split" in record
    out = capsys.readouterr().out
    assert f"{100 * want['recall@5']:.2f}" in out and "map@r" in out and "metrics_E.json" in out


def test_query_mask_and_out_path(saved):
    tmp, emb, labels = saved
    mask = np.arange(150) % 3 == 0
    np.save(tmp / "Q.npy", mask)
    out = tmp / "sub" / "m.json"
    assert main(["--embeddings", str(tmp / "E.npy"), "--labels", str(tmp / "L.npy"),
                 "--query-mask", str(tmp / "Q.npy"), "--out", str(out)]) == 0
    record = json.loads(out.read_text())
    want = evaluate_embeddings(emb, labels, recall_k=(1, 2, 4, 8), query_mask=mask, nmi=True)
    assert record["num_queries"] == 50
    for key in ("recall@1", "recall@8", "map@r", "r_precision", "precision@1", "nmi"):
        assert record[key] == pytest.approx(want[key], abs=1e-12), key


@pytest.mark.parametrize("missing", ["E.npy", "L.npy", "Q.npy"])
def test_missing_file_exits_2_naming_it(saved, capsys, missing):
    tmp, _, _ = saved
    np.save(tmp / "Q.npy", np.ones(150, bool))
    paths = {name: str(tmp / name) for name in ("E.npy", "L.npy", "Q.npy")}
    paths[missing] = str(tmp / "nowhere" / missing)
    code = main(["--embeddings", paths["E.npy"], "--labels", paths["L.npy"], "--query-mask", paths["Q.npy"]])
    assert code == 2
    assert paths[missing] in capsys.readouterr().err


def test_mismatched_lengths_and_missing_labels(saved, capsys):
    tmp, _, labels = saved
    np.save(tmp / "L2.npy", labels[:10])
    assert main(["--embeddings", str(tmp / "E.npy"), "--labels", str(tmp / "L2.npy")]) == 2
    assert main(["--embeddings", str(tmp / "E.npy")]) == 2
    assert "--labels" in capsys.readouterr().err


def test_missing_checkpoint_exits_2(tmp_path, capsys):
    assert main(["--ckpt", str(tmp_path / "none.pt")]) == 2
    assert str(tmp_path / "none.pt") in capsys.readouterr().err


def test_tools_entry_point(saved):
    tmp, _, _ = saved
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "tools", "eval.py"), "--embeddings", str(tmp / "E.npy"),
                           "--labels", str(tmp / "L.npy"), "--recall-k", "1", "--out", str(tmp / "x.json")],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "recall@1" in proc.stdout and json.loads((tmp / "x.json").read_text())["recall@1"] >= 0


@pytest.mark.parametrize("method", ["dba", "aqe"])
def test_refine_reports_refined_metrics_beside_the_headline(saved, capsys, method):
    from ibc_geo.evaluation.refine import Refinement, refine_embeddings

    tmp, emb, labels = saved
    assert main(["--embeddings", str(tmp / "E.npy"), "--labels", str(tmp / "L.npy"), "--recall-k", "1",
                 "--refine", method, "eval.refine_k", "5", "eval.nmi", "false"]) == 0
    record = json.loads((tmp / "metrics_E.json").read_text())
    plain = evaluate_embeddings(emb, labels, recall_k=(1,), nmi=False)
    assert record["map@r"] == pytest.approx(plain["map@r"], abs=1e-12)       # the headline is unrefined
    # the refined numbers, computed here by hand: groups of the item and its 4 nearest others
    x = emb / np.linalg.norm(emb, axis=1, keepdims=True)
    sims = x @ x.T
    np.fill_diagonal(sims, -np.inf)
    nbrs = np.argsort(-sims, axis=1, kind="stable")[:, :4]
    groups = np.concatenate([np.arange(len(x))[:, None], nbrs], axis=1)
    if method == "dba":
        refined = x[groups].mean(axis=1)
        want = evaluate_embeddings(refined, labels, recall_k=(1,), nmi=False)
    else:
        w = np.maximum(np.einsum("nd,nkd->nk", x, x[groups]), 0) ** 3.0
        w[:, 0] = 1.0
        want = evaluate_embeddings(np.einsum("nk,nkd->nd", w, x[groups]), labels, recall_k=(1,), nmi=False,
                                   database_embeddings=x)
    assert record["refined"]["refinement"]["method"] == method and record["refined"]["refinement"]["k"] == 5
    for key in ("recall@1", "map@r", "r_precision"):
        assert record["refined"]["metrics"][key] == pytest.approx(want[key], abs=1e-9), key
    assert record["refined"]["metrics"]["map@r"] != pytest.approx(record["map@r"], abs=1e-6)
    assert "refined (method " + method in capsys.readouterr().out


def test_refine_mpn_on_saved_embeddings_is_refused(saved, capsys):
    tmp, _, _ = saved
    assert main(["--embeddings", str(tmp / "E.npy"), "--labels", str(tmp / "L.npy"), "--refine", "mpn"]) == 2
    assert "--refine mpn needs the model's MPN" in capsys.readouterr().err
