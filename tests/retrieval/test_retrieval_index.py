"""SearchIndex and the embeddings file on synthetic vectors: evaluation's exact rule, faiss indexes,
saved indexes checked against their gallery, chunked writing that leaves nothing behind on error."""
import json
import os

import numpy as np
import pytest

from ibc_geo.evaluation.knn import knn_search
from ibc_geo.retrieval.errors import GalleryError, IndexMismatchError
from ibc_geo.retrieval.gallery import EmbeddingWriter, embeddings_sha256, load_gallery, write_embeddings
from ibc_geo.retrieval.search import SearchIndex, drop_own


def unit(x):
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


@pytest.fixture
def vectors():
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(8, 16))
    x = unit(centres[rng.integers(0, 8, 400)] + 0.3 * rng.normal(size=(400, 16)))
    x[7] = x[3]  # an exact duplicate: ties, and a query whose twin ranks with it
    return x


def test_exact_search_of_members_is_evaluations_knn(vectors):
    index = SearchIndex(vectors)
    sims, ids = index.search(vectors, 5, exclude=np.arange(len(vectors)))
    want_sims, want_ids = knn_search(vectors, vectors, 5, exclude_self=True)
    assert np.array_equal(ids, want_ids) and np.array_equal(sims, want_sims)
    assert ids[3, 0] == 7 and ids[7, 0] == 3  # the duplicate is found, the query itself never
    some = np.array([7, 3, 100])
    s, i = index.search(vectors[some], 5, exclude=some)
    assert np.array_equal(i, want_ids[some])


def test_drop_own_removes_the_query_or_the_last():
    ids = np.array([[4, 2, 9], [1, 5, 6]])
    sims = np.array([[0.9, 0.8, 0.7], [0.9, 0.8, 0.7]], np.float32)
    s, i = drop_own(sims, ids, np.array([2, 3]))
    assert i.tolist() == [[4, 9], [1, 5]] and np.allclose(s, [[0.9, 0.7], [0.9, 0.8]])


@pytest.mark.parametrize("factory,params", [("HNSW16", "efSearch=200"), ("IVF8,Flat", "nprobe=8"), ("IVF8,PQ4x4", "nprobe=8")])
def test_approximate_indexes_report_exact_cosines(vectors, factory, params):
    index = SearchIndex.build(vectors, factory, params)
    sims, ids = index.search(vectors[:50], 10, exclude=np.arange(50))
    assert (ids >= 0).all() and not (ids == np.arange(50)[:, None]).any()
    exact = np.einsum("qd,qkd->qk", vectors[:50], vectors[ids])
    assert np.allclose(sims, exact, atol=1e-6) and (np.diff(sims, axis=1) <= 1e-7).all()
    want = knn_search(vectors[:50], vectors, 11)[1]
    recall = np.mean([len(set(a) & set(b[b != q])) / 10 for q, (a, b) in enumerate(zip(ids, want))])
    assert recall > (0.9 if "PQ" not in factory else 0.3)  # 4-bit codes of 4-d pieces find fewer, scored exactly


def test_fewer_found_than_k_are_marked_missing(vectors):
    index = SearchIndex.build(vectors, "IVF16,Flat", "nprobe=1")
    sims, ids = index.search(vectors[:20], 60)
    rows = (ids < 0).any(axis=1)
    assert rows.any()  # one list of ~25 items cannot give 60
    for s, i in zip(sims[rows], ids[rows]):
        found = i >= 0
        assert found[: found.sum()].all() and np.isnan(s[~found]).all()


def test_indexes_that_cannot_be_built_are_user_errors(vectors):
    with pytest.raises(IndexMismatchError, match="at least 4096 vectors"):
        SearchIndex.build(vectors, "IVF4096,Flat", source="gallery g.npz")
    with pytest.raises(IndexMismatchError, match="not a faiss index-factory string"):
        SearchIndex.build(vectors, "Nonsense42")


def test_saved_index_reloads_for_its_gallery_only(vectors, tmp_path, caplog):
    fp = embeddings_sha256(vectors)
    built = SearchIndex.build(vectors, "HNSW16", fingerprint=fp)
    path = str(tmp_path / "g.index")
    built.save(path, gallery="g.npz")
    assert json.load(open(path + ".json"))["gallery_sha256"] == fp
    loaded = SearchIndex.load(path, vectors, fp, "g.npz")
    assert loaded.factory == "HNSW16" and loaded.params == built.params
    a, b = built.search(vectors, 5, exclude=np.arange(400)), loaded.search(vectors, 5, exclude=np.arange(400))
    assert np.array_equal(a[1], b[1]) and np.array_equal(a[0], b[0])

    other = vectors[::-1].copy()
    with pytest.raises(IndexMismatchError, match=r"built on another gallery .*not on other\.npz"):
        SearchIndex.load(path, other, embeddings_sha256(other), "other.npz")
    with pytest.raises(IndexMismatchError, match="holds 400 vectors, but gallery small.npz has 10"):
        SearchIndex.load(path, vectors[:10], "", "small.npz")
    with pytest.raises(IndexMismatchError, match="16-d vectors, but gallery wide.npz has 32-d"):
        SearchIndex.load(path, np.zeros((400, 32), np.float32), "", "wide.npz")
    with pytest.raises(IndexMismatchError, match="index file not found"):
        SearchIndex.load(str(tmp_path / "none.index"), vectors, fp)
    os.remove(path + ".json")  # a bare faiss file of the right size still loads, with a warning
    assert SearchIndex.load(path, vectors, fp, "g.npz").search(vectors[:3], 2)[1].shape == (3, 2)
    assert "cannot verify" in caplog.text


def test_writer_in_any_order_and_nothing_left_on_error(vectors, tmp_path):
    path = str(tmp_path / "e.npz")
    paths = [f"img_{i}.jpg" for i in range(400)]
    order = np.random.default_rng(1).permutation(400)
    with EmbeddingWriter(path, paths, 16, labels=np.arange(400) % 8, class_names=list("abcdefgh"),
                         meta={"config_hash": "c0ffee"}, chunk_size=64) as writer:
        for part in np.array_split(order, 13):
            writer.add(part, vectors[part])
    assert writer.chunks_written == 5  # 13 parts of ~31 rows: a write after every 3, and the rest
    g = load_gallery(path)
    assert np.array_equal(g.embeddings, vectors) and list(g.paths) == paths and g.label_name(int(g.labels[9])) == "b"
    assert g.meta["config_hash"] == "c0ffee" and g.fingerprint == embeddings_sha256(vectors)

    broken = str(tmp_path / "broken.npz")
    with pytest.raises(RuntimeError):
        with EmbeddingWriter(broken, paths, 16, chunk_size=8) as writer:
            writer.add(np.arange(20), vectors[:20])
            raise RuntimeError("a crash half-way")
    with pytest.raises(ValueError, match="never written"):
        with EmbeddingWriter(broken, paths, 16) as writer:
            writer.add(np.arange(20), vectors[:20])
    assert sorted(os.listdir(tmp_path)) == ["e.npz"]


def test_bad_gallery_files(tmp_path):
    with pytest.raises(GalleryError, match="gallery file not found"):
        load_gallery(str(tmp_path / "none.npz"))
    (tmp_path / "text.npz").write_text("hello")
    with pytest.raises(GalleryError, match="cannot read gallery"):
        load_gallery(str(tmp_path / "text.npz"))
    np.savez(tmp_path / "other.npz", x=np.zeros(3))
    with pytest.raises(GalleryError, match="no 'embeddings' array"):
        load_gallery(str(tmp_path / "other.npz"))
    write_embeddings(str(tmp_path / "ok.npz"), np.eye(2, 4), ["a", "b"])
    assert load_gallery(str(tmp_path / "ok.npz")).dim == 4
