"""No wrong number without a word (issue 22, cases 5-8): a gallery that is not unit-norm, all-zero
embeddings at evaluation, a gallery whose embeddings were swapped under its fingerprint, and the
duplicate flag of ``--index Flat --params``."""
import json
import logging

import numpy as np
import pytest

from retrieval_util import cli


def test_a_gallery_that_is_not_unit_norm_is_ranked_by_cosine(tmp_path, caplog):
    from ibc_geo.retrieval.gallery import write_embeddings

    rng = np.random.default_rng(0)
    unit = rng.standard_normal((30, 8)).astype(np.float32)
    unit /= np.linalg.norm(unit, axis=1, keepdims=True)
    scale = rng.uniform(0.5, 30.0, (30, 1)).astype(np.float32)
    g = tmp_path / "raw.npz"
    write_embeddings(str(g), unit * scale, [f"#{i}" for i in range(30)])
    out = tmp_path / "r.json"
    with caplog.at_level(logging.WARNING):
        assert cli("search", "--gallery", g, "--query-ids", "0", "--k", "5", "--out", out) == 0
    assert "30 of 30 embeddings are not L2-normalised" in caplog.text
    neighbours = json.loads(out.read_text())["queries"][0]["neighbours"]
    cosines = unit[1:] @ unit[0]
    want = np.sort(cosines)[::-1][:5]
    got = np.array([nb["similarity"] for nb in neighbours])
    assert np.allclose(got, want, atol=1e-5) and got.max() <= 1.0 + 1e-6


def test_all_zero_embeddings_at_evaluation_are_named(tmp_path, caplog):
    np.save(tmp_path / "zeros.npy", np.zeros((50, 8), np.float32))
    np.save(tmp_path / "l.npy", np.arange(50) % 5)
    with caplog.at_level(logging.WARNING):
        assert cli("eval", "--embeddings", tmp_path / "zeros.npy", "--labels", tmp_path / "l.npy") == 0
    assert f"all 50 embeddings in {tmp_path / 'zeros.npy'} are zero" in caplog.text


def test_constant_and_duplicated_embeddings_at_evaluation_are_named(tmp_path, caplog):
    from ibc_geo.cli.eval import warn_degenerate

    with caplog.at_level(logging.WARNING):
        warn_degenerate(np.ones((20, 4), np.float32), "c.npy")
        rows = np.random.default_rng(0).standard_normal((20, 4)).astype(np.float32)
        rows[10:] = rows[0]
        warn_degenerate(rows, "d.npy")
    assert "all 20 embeddings in c.npy are the same vector" in caplog.text
    assert "d.npy: 0 of 20 embeddings are zero and 10 are exact copies of another row (10 distinct)" in caplog.text


def test_a_gallery_swapped_under_its_fingerprint_is_refused(gallery, tmp_path, capsys):
    index = tmp_path / "ivf.index"
    assert cli("search", "--gallery", gallery, "--query-ids", "0", "--k", "2", "--index", "IVF1,Flat",
               "--save-index", index) == 0
    with np.load(gallery) as z:
        data = {k: z[k] for k in z.files}
    data["embeddings"] = np.ascontiguousarray(data["embeddings"][::-1])  # swapped, fingerprint kept
    swapped = tmp_path / "swapped.npz"
    np.savez(swapped, **data)
    capsys.readouterr()
    assert cli("search", "--gallery", swapped, "--query-ids", "0", "--k", "2", "--load-index", index) == 2
    err = capsys.readouterr().err
    assert f"gallery {swapped}: its embeddings do not match the embeddings_sha256 stored with them" in err


def test_flat_with_search_parameters_is_refused(gallery, capsys):
    assert cli("search", "--gallery", gallery, "--query-ids", "0", "--k", "2", "--index", "Flat",
               "--params", "efSearch=3") == 2
    assert "efSearch=3" in capsys.readouterr().err
