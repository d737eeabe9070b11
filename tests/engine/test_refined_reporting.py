"""Refined metrics beside the headline: metrics.json, TensorBoard test/refined/*, tools/eval.py
--refine; one exact search of the backbone embeddings per evaluation; the MPN refusals."""
import json
import os

import numpy as np
import pytest

import ibc_geo.evaluation.retrieval as retrieval_module
from ibc_geo.engine import evaluate_checkpoint, train
from ibc_geo.engine.checkpoint import CheckpointError
from ibc_geo.evaluation import evaluate_embeddings, extract_embeddings
from ibc_geo.evaluation.refine import Refinement, mpn_refine, refine_embeddings


@pytest.fixture
def count_searches(monkeypatch):
    calls = []
    real = retrieval_module.iter_knn

    def counted(queries, database, *args, **kwargs):
        calls.append(len(queries))
        return real(queries, database, *args, **kwargs)

    monkeypatch.setattr(retrieval_module, "iter_knn", counted)
    return calls


def test_one_search_per_evaluation_and_refined_metrics_beside_the_headline(tiny_cfg, count_searches):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    cfg = tiny_cfg("eval.refine", "mpn", "eval.refine_k", "4")
    result = train(cfg)
    # 2 selection evaluations (val, picture included) + the final test: 3 searches of backbone
    # embeddings; + 1 search of the refined test embeddings
    assert len(count_searches) == 4
    record = json.load(open(os.path.join(cfg.output_dir, "metrics.json")))
    assert record["refined"]["refinement"] == {"method": "mpn", "k": 4, "neighbours": "knn"}
    assert set(record["refined"]["metrics"]) >= {"recall@1", "map@r", "nmi"}
    assert record["test"] == pytest.approx(result["test"]) and "refined" not in record["test"]
    acc = EventAccumulator(cfg.output_dir, size_guidance={"scalars": 0})
    acc.Reload()
    assert acc.Scalars("test/refined/map@r")[0].value == pytest.approx(record["refined"]["metrics"]["map@r"])
    assert acc.Scalars("test/map@r")[0].value == pytest.approx(record["test"]["map@r"])
    # the refined numbers are those of refining the best model's test embeddings by hand
    from ibc_geo.data import build_dataset, build_eval_loader, build_transforms
    from ibc_geo.engine.evaluator import model_from_checkpoint
    from ibc_geo.engine.checkpoint import load_checkpoint

    best = os.path.join(cfg.output_dir, "checkpoints", "best.pt")
    model = model_from_checkpoint(cfg, load_checkpoint(best), best)
    test_set = build_dataset(cfg, "test", build_transforms(cfg, train=False))
    features, labels = extract_embeddings(model, build_eval_loader(cfg, test_set), "cpu", normalize=False)
    _, retrieval = evaluate_embeddings(features, labels, recall_k=cfg.eval.recall_k, nmi=False, min_k=3,
                                       return_retrieval=True)
    refined = refine_embeddings(features, retrieval, Refinement("mpn", k=4),
                                run_mpn=lambda f, g: mpn_refine(model.mpn, f, g))
    by_hand = evaluate_embeddings(refined, labels, recall_k=cfg.eval.recall_k, nmi=False)
    for key in ("recall@1", "map@r"):
        assert record["refined"]["metrics"][key] == pytest.approx(by_hand[key], abs=1e-4)  # float rounding of near ties


def test_refine_mpn_without_an_mpn_is_refused(tiny_cfg, tmp_path):
    from ibc_geo.config import ConfigError

    with pytest.raises(ConfigError, match="eval.refine.*graph.topology 'none'"):
        train(tiny_cfg("graph.topology", "none", "eval.refine", "mpn"))
    assert not os.path.exists(tmp_path / "run" / "checkpoints")
    cfg = tiny_cfg("graph.topology", "none", "train.epochs", "1")
    train(cfg)
    ckpt = os.path.join(cfg.output_dir, "checkpoints", "best.pt")
    with pytest.raises(CheckpointError, match=f"checkpoint {ckpt} has none"):
        evaluate_checkpoint(tiny_cfg("graph.topology", "none", "eval.refine", "mpn"), ckpt, refine=True)
    metrics = evaluate_checkpoint(tiny_cfg("graph.topology", "none", "eval.refine", "dba"), ckpt, refine=True)
    assert metrics["refined"]["refinement"]["method"] == "dba"
    assert metrics["map@r"] == pytest.approx(evaluate_checkpoint(cfg, ckpt)["map@r"])


def test_refine_k_at_least_the_gallery_size_is_refused_naming_key_and_size(tiny_cfg):
    from ibc_geo.evaluation.refine import RefinementError

    cfg = tiny_cfg("graph.topology", "none", "train.epochs", "1")
    train(cfg)
    ckpt = os.path.join(cfg.output_dir, "checkpoints", "best.pt")
    with pytest.raises(RefinementError, match="eval.refine_k = 100000 must be below the gallery size"):
        evaluate_checkpoint(tiny_cfg("graph.topology", "none", "eval.refine", "dba", "eval.refine_k", "100000"),
                            ckpt, refine=True)
