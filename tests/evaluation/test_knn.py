"""ibc_geo.evaluation.knn against a numpy brute force: order, ties, self-exclusion, chunks."""
import numpy as np
import pytest

from ibc_geo.evaluation import knn_search, l2_normalize


def integer_vectors(n, d, seed=0):
    """Small-integer vectors: inner products are exact integers in float32, with many exact ties."""
    return np.random.default_rng(seed).integers(-2, 3, size=(n, d)).astype(np.float32)


def unit(n, d, seed=0):
    x = np.random.default_rng(seed).standard_normal((n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def brute_knn(q, db, k, exclude_self=False):
    """Full ranking by (similarity desc, index asc), computed in float64, self removed by index."""
    sims = q.astype(np.float64) @ db.astype(np.float64).T
    ids = np.broadcast_to(np.arange(db.shape[0]), sims.shape)
    order = np.lexsort((ids, -sims), axis=1)
    out = []
    for i, row in enumerate(order):
        if exclude_self:
            row = row[row != i]
        out.append(row[:k])
    return np.array(out)


@pytest.mark.parametrize("k", [1, 5, 120])
@pytest.mark.parametrize("exclude_self", [False, True])
def test_matches_brute_force(k, exclude_self):
    db = integer_vectors(400, 6, seed=1)
    q = db if exclude_self else integer_vectors(70, 6, seed=2)
    sims, ids = knn_search(q, db, k, exclude_self=exclude_self, chunk_size=32)
    assert sims.shape == ids.shape == (q.shape[0], k)
    assert sims.dtype == np.float32 and ids.dtype == np.int64
    np.testing.assert_array_equal(ids, brute_knn(q, db, k, exclude_self))
    np.testing.assert_array_equal(sims, np.take_along_axis(q @ db.T, ids, axis=1))
    assert np.all(np.diff(sims, axis=1) <= 0)


def test_self_excluded_by_index_with_exact_duplicates():
    x = unit(60, 8, seed=3)
    x[10:16] = x[10]  # six identical items: each one's top-5 are the other five, by index
    x[40:42] = x[40]
    sims, ids = knn_search(x, x, 5, exclude_self=True, chunk_size=7)
    for i in range(60):
        assert i not in ids[i]
    for i in range(10, 16):
        np.testing.assert_array_equal(ids[i], [j for j in range(10, 16) if j != i])
        assert np.all(sims[i] == sims[i, 0])
    assert ids[40, 0] == 41 and ids[41, 0] == 40
    np.testing.assert_array_equal(ids, brute_knn(x, x, 5, exclude_self=True))


def test_self_absent_from_the_k_plus_1_tied_results():
    # Ten copies, k = 3: the k + 1 = 4 results of copy 9 are copies 0..3 (ties keep the smallest
    # indices), so copy 9 itself is not among them and the 4th result is the one dropped.
    x = unit(30, 8, seed=4)
    x[:10] = x[0]
    _, ids = knn_search(x, x, 3, exclude_self=True)
    np.testing.assert_array_equal(ids[9], [0, 1, 2])
    np.testing.assert_array_equal(ids[0], [1, 2, 3])
    np.testing.assert_array_equal(ids[2], [0, 1, 3])


@pytest.mark.parametrize("k", [10, 150])  # faiss's heap (k < 100) and reservoir (k >= 100) paths
def test_ties_at_the_kth_place_keep_smallest_indices(k):
    db = unit(2000, 8, seed=5)
    dup = np.random.default_rng(6).choice(2000, 400, replace=False)
    db[dup] = db[dup[0]]
    q = np.concatenate([db[dup[:1]], unit(30, 8, seed=7)])
    _, ids = knn_search(q, db, k)
    np.testing.assert_array_equal(ids[0], np.sort(dup)[:k])


def test_chunk_size_does_not_change_results():
    x = unit(300, 12, seed=8)
    x[50:60] = x[50]
    ref = knn_search(x, x, 20, exclude_self=True, chunk_size=4096)
    for chunk in (1, 7, 64, 299):
        sims, ids = knn_search(x, x, 20, exclude_self=True, chunk_size=chunk)
        np.testing.assert_array_equal(ids, ref[1])
        np.testing.assert_allclose(sims, ref[0], atol=1e-6)


def test_torch_input_and_normalize():
    torch = pytest.importorskip("torch")
    x = np.random.default_rng(9).standard_normal((50, 6)).astype(np.float32) * 7
    n = l2_normalize(torch.from_numpy(x))
    np.testing.assert_allclose(np.linalg.norm(n, axis=1), 1, atol=1e-6)
    np.testing.assert_array_equal(knn_search(torch.from_numpy(n), n, 4)[1], knn_search(n, n, 4)[1])
    assert np.all(l2_normalize(np.zeros((2, 3))) == 0)


def test_errors():
    x = unit(10, 4)
    with pytest.raises(ValueError, match="exceeds"):
        knn_search(x, x, 10, exclude_self=True)
    with pytest.raises(ValueError, match="positive"):
        knn_search(x, x, 0)
    with pytest.raises(ValueError, match="exclude_self"):
        knn_search(x[:5], x, 2, exclude_self=True)
    bad = x.copy()
    bad[3, 1] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        knn_search(bad, x, 2)
    with pytest.raises(ValueError, match="dimensions"):
        knn_search(x[:, :3], x, 2)
