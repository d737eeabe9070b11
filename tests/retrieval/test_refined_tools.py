"""tools/embed.py --refine and tools/search.py --refine on the tiny run and its image gallery: the
files and the searches against the evaluation's refinement and per-query computations written here."""
import json
import os

import numpy as np
import pytest

from retrieval_util import ROOT, TINY, cli

K = 3  # group size: the item and its 2 nearest others (the image folder holds 3 images a class)


def normalized(x):
    x = np.asarray(x, np.float32)
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def ranked(sims, k, exclude=None):
    """The ``k`` best indices of ``sims`` [M] by decreasing value, ties by index (``exclude`` left out)."""
    order = [int(j) for j in np.lexsort((np.arange(len(sims)), -sims)) if j != exclude]
    return order[:k]


def assert_ranking(got, scores, k, exclude=None):
    """``got`` (a query of the tool's JSON) lists a top ``k`` of ``scores`` [M] with their values:
    exact up to the order of (near-)ties, which dba makes (a class's members share groups)."""
    ids = [nb["id"] for nb in got["neighbours"]]
    sims = np.array([nb["similarity"] for nb in got["neighbours"]])
    assert len(ids) == k == len(set(ids)) and exclude not in ids
    np.testing.assert_allclose(sims, scores[ids], atol=1e-5)
    assert (np.diff(sims) <= 1e-6).all()
    rest = [j for j in range(len(scores)) if j not in ids and j != exclude]
    assert not rest or scores[ids].min() >= scores[rest].max() - 1e-5


def queries_of(path):
    with open(path) as f:
        return json.load(f)["queries"]


@pytest.fixture(scope="module")
def refined(tiny_run, image_folder, tmp_path_factory):
    """The image folder embedded with --refine dba (k 3); the tool's stdout."""
    out = tmp_path_factory.mktemp("refined") / "dba.npz"
    assert cli("embed", "--cfg", tiny_run["cfg"], "--ckpt", tiny_run["ckpt"], "--images", image_folder,
               "--labels-from-folders", "--refine", "dba", "eval.refine_k", K, "--out", out) == 0
    return str(out)


def test_embed_refine_dba_is_the_evaluations_refinement(refined, gallery):
    from ibc_geo.evaluation.knn import l2_normalize
    from ibc_geo.evaluation.refine import Refinement, refine_embeddings
    from ibc_geo.evaluation.retrieval import retrieve
    from ibc_geo.retrieval.gallery import load_gallery

    z, plain = np.load(refined), np.load(gallery)
    unrefined = z["unrefined_embeddings"]
    assert np.array_equal(unrefined, plain["embeddings"])  # the unrefined file's rows, kept
    retrieval = retrieve(l2_normalize(unrefined), l2_normalize(unrefined), K - 1, exclude_self=True)
    want = refine_embeddings(unrefined, retrieval, Refinement("dba", k=K))
    assert np.array_equal(z["embeddings"], want) and not np.allclose(want, unrefined)
    assert json.loads(str(z["refinement"])) == {"method": "dba", "k": K, "neighbours": "knn"}
    assert "features" not in z.files and list(z["paths"]) == list(plain["paths"])
    g = load_gallery(refined)
    assert g.refinement == {"method": "dba", "k": K, "neighbours": "knn"} and g.meta["refinement"]
    assert np.array_equal(g.base_embeddings, unrefined)
    # an unrefined file is as it was: no refinement member, nothing refined read back
    assert "refinement" not in plain.files and "unrefined_embeddings" not in plain.files
    assert load_gallery(gallery).refinement is None


def test_search_refine_dba_of_a_member_image_and_of_member_ids(refined, tiny_run, tmp_path, capsys):
    from ibc_geo.retrieval.embed import embed_images, load_embedder

    z = np.load(refined)
    base, stored, paths = normalized(z["unrefined_embeddings"]), z["embeddings"], list(z["paths"])
    i, k = 4, 12  # every gallery row: the similarities pin the refined query down
    out = tmp_path / "image.json"
    capsys.readouterr()
    assert cli("search", "--gallery", refined, "--query", paths[i], "--cfg", tiny_run["cfg"], "--ckpt", tiny_run["ckpt"],
               "--refine", "dba", "--k", k, "--out", out) == 0
    assert "queries refined by dba (k 3)" in capsys.readouterr().out
    # the same query, refined here: itself and its 2 nearest unrefined gallery rows, normalised mean
    q = normalized(embed_images(load_embedder(tiny_run["config"], tiny_run["ckpt"]), [paths[i]]))[0]
    group = ranked(base @ q, K - 1)
    assert group[0] == i  # the image is a member: its own row is its nearest
    v = normalized(np.stack([q, *base[group]]).sum(axis=0))
    got = queries_of(out)[0]
    assert got["group"] == group
    assert_ranking(got, stored @ v, k)
    assert json.load(open(out))["refinement"] == {"method": "dba", "k": K, "neighbours": "knn"}

    # gallery members as queries: their stored refined rows, themselves excluded
    ids = [0, 4, 11]
    assert cli("search", "--gallery", refined, "--query-ids", *ids, "--refine", "dba", "--k", 5,
               "--out", tmp_path / "ids.json") == 0
    for qi, r in zip(ids, queries_of(tmp_path / "ids.json")):
        assert_ranking(r, stored @ stored[qi], 5, exclude=qi)
        assert r["id"] == qi and "group" not in r


def test_search_refine_aqe_on_an_unrefined_gallery_is_alpha_query_expansion(gallery, tmp_path):
    from ibc_geo.evaluation.refine import Refinement, refine_embeddings
    from ibc_geo.evaluation.retrieval import retrieve

    x = normalized(np.load(gallery)["embeddings"])
    ids, k, alpha = [0, 3, 7, 10], 4, 2.0
    assert cli("search", "--gallery", gallery, "--query-ids", *ids, "--refine", "aqe", "eval.refine_k", K,
               "eval.refine_alpha", alpha, "--k", k, "--out", tmp_path / "aqe.json") == 0
    result = queries_of(tmp_path / "aqe.json")
    expanded = refine_embeddings(x, retrieve(x, x, K - 1, exclude_self=True), Refinement("aqe", k=K, alpha=alpha))
    for qi, r in zip(ids, result):
        group = ranked(x @ x[qi], K - 1, exclude=qi)
        w = np.maximum(x[group] @ x[qi], 0) ** alpha
        v = normalized(x[qi] + (w[:, None] * x[group]).sum(axis=0))
        np.testing.assert_allclose(v, expanded[qi], atol=1e-6)  # the evaluation's aqe of the member
        assert sorted(r["group"]) == sorted(group)
        assert_ranking(r, x @ v, k, exclude=qi)  # the expanded query searches the original gallery


def test_refusals(refined, gallery, tiny_run, image_folder, tmp_path, capsys):
    def refused(tool, *argv):
        capsys.readouterr()
        code = cli(tool, *argv)
        err = capsys.readouterr().err.strip()
        assert code == 2 and len(err.splitlines()) == 1 and err.startswith("error: "), err
        return err

    err = refused("search", "--gallery", refined, "--query-ids", 0, "--k", 2)
    assert err == f"error: gallery {refined} holds embeddings refined by dba (k 3): pass --refine dba"
    err = refused("search", "--gallery", gallery, "--query-ids", 0, "--refine", "dba", "--k", 2)
    assert f"gallery {gallery} holds unrefined embeddings" in err and "--refine dba needs a gallery written refined" in err
    err = refused("search", "--gallery", refined, "--query-ids", 0, "--refine", "aqe", "--k", 2)
    assert "--refine aqe contradicts" in err and "refined by dba (k 3)" in err
    err = refused("search", "--gallery", refined, "--query-ids", 0, "--refine", "dba", "eval.refine_k", 5, "--k", 2)
    assert "eval.refine_k 5 contradicts" in err and "dba (k 3)" in err

    out = tmp_path / "aqe.npz"
    err = refused("embed", "--cfg", tiny_run["cfg"], "--ckpt", tiny_run["ckpt"], "--images", image_folder,
                  "--refine", "aqe", "--out", out)
    assert "query-side" in err and "tools/search.py --refine aqe" in err and not out.exists()


def test_embed_refine_mpn_needs_an_mpn(image_folder, tmp_path, capsys):
    """A graph.topology none checkpoint (built, not trained) has no MPN: named, nothing written."""
    import torch  # noqa: F401

    from ibc_geo.config import config_to_dict, load_config, save_config
    from ibc_geo.engine.checkpoint import save_checkpoint
    from ibc_geo.modeling import IntraBatchModel

    cfg = load_config(os.path.join(ROOT, "configs", "demo.yaml"),
                      TINY + ["graph.topology", "none", "output_dir", str(tmp_path)])
    model = IntraBatchModel.from_config(cfg, num_classes=5)
    assert model.mpn is None
    ckpt, cfg_file, out = tmp_path / "none.pt", tmp_path / "config.yaml", tmp_path / "mpn.npz"
    save_checkpoint({"model": model.state_dict(), "config": config_to_dict(cfg), "epoch": 1}, ckpt)
    save_config(cfg, cfg_file)
    capsys.readouterr()
    assert cli("embed", "--cfg", cfg_file, "--ckpt", ckpt, "--images", image_folder, "--refine", "mpn",
               "--out", out) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and f"checkpoint {ckpt} has none" in err and "graph.topology none" in err
    assert not out.exists()


def test_embed_and_search_refine_mpn(tiny_run, image_folder, tmp_path):
    """mpn: the file is the evaluation's refinement of the raw features; a new query's graph is it
    and its neighbours' stored features through the same MPN."""
    import torch

    from ibc_geo.engine.checkpoint import load_checkpoint
    from ibc_geo.engine.evaluator import model_from_checkpoint
    from ibc_geo.evaluation.knn import l2_normalize
    from ibc_geo.evaluation.refine import Refinement, mpn_refine, refine_embeddings
    from ibc_geo.evaluation.retrieval import retrieve
    from ibc_geo.retrieval.embed import embed_images, load_embedder

    out = tmp_path / "mpn.npz"
    assert cli("embed", "--cfg", tiny_run["cfg"], "--ckpt", tiny_run["ckpt"], "--images", image_folder,
               "--refine", "mpn", "eval.refine_k", K, "--out", out) == 0
    z = np.load(out)
    unrefined, features = z["unrefined_embeddings"], z["features"]
    np.testing.assert_allclose(normalized(features), unrefined, atol=1e-6)
    model = model_from_checkpoint(tiny_run["config"], load_checkpoint(tiny_run["ckpt"]), tiny_run["ckpt"])

    def run_mpn(f, g):
        return mpn_refine(model.mpn, f, g, torch.device("cpu"))

    x = l2_normalize(unrefined)
    want = refine_embeddings(unrefined, retrieve(x, x, K - 1, exclude_self=True), Refinement("mpn", k=K),
                             features=features, run_mpn=run_mpn)
    np.testing.assert_allclose(z["embeddings"], want, atol=1e-5)
    assert json.loads(str(z["refinement"]))["method"] == "mpn" and len(str(z["mpn_hash"])) == 16

    path, k = str(z["paths"][7]), 4
    assert cli("search", "--gallery", out, "--query", path, "--cfg", tiny_run["cfg"], "--ckpt", tiny_run["ckpt"],
               "--refine", "mpn", "--k", k, "--out", tmp_path / "r.json") == 0
    got = queries_of(tmp_path / "r.json")[0]
    q, f = embed_images(load_embedder(tiny_run["config"], tiny_run["ckpt"]), [path], with_features=True)
    group = ranked(x @ normalized(q)[0], K - 1)
    v = normalized(run_mpn(np.concatenate([f, features[group]]), np.array([[0, 1, 2]])))[0]
    assert got["group"] == group
    assert_ranking(got, z["embeddings"] @ v, k)
