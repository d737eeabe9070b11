"""ibc_geo.evaluation.metrics against numpy brute force written here, scikit-learn and a hand example."""
import math

import numpy as np
import pytest
from sklearn.metrics import normalized_mutual_info_score

from ibc_geo.evaluation import (
    evaluate_embeddings,
    format_table,
    iter_kmeans,
    kmeans,
    kmeans_assign,
    kmeans_plusplus,
    map_at_r,
    nmi_score,
    r_precision,
    recall_at_k,
)


def random_set(n=240, d=12, classes=25, seed=0):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, classes, n)
    x = rng.standard_normal((n, d)).astype(np.float32) + 0.9 * rng.standard_normal((classes, d)).astype(np.float32)[labels]
    return x, labels


def brute_metrics(x, labels, ks, query_mask=None):
    """Rank every database item for every query (float64, ties by index), then count by the definitions."""
    x = x / np.linalg.norm(x, axis=1, keepdims=True)
    n = len(labels)
    if query_mask is None:
        queries, gallery = np.arange(n), np.arange(n)
    else:
        queries, gallery = np.flatnonzero(query_mask), np.flatnonzero(~query_mask)
    hits = {k: 0 for k in ks}
    aps, rps, p1 = [], [], []
    for q in queries:
        cand = gallery[gallery != q]
        sims = x[cand].astype(np.float64) @ x[q].astype(np.float64)
        ranked = cand[np.lexsort((cand, -sims))]
        rel = labels[ranked] == labels[q]
        for k in ks:
            hits[k] += bool(rel[:k].any())
        r = int(rel.sum())
        if r == 0:
            continue
        p1.append(rel[0])
        prec = [rel[:i + 1].sum() / (i + 1) for i in range(r)]
        aps.append(sum(p for p, h in zip(prec, rel[:r]) if h) / r)
        rps.append(rel[:r].sum() / r)
    out = {f"recall@{k}": hits[k] / len(queries) for k in ks}
    out.update({"map@r": np.mean(aps), "r_precision": np.mean(rps), "precision@1": np.mean(p1)})
    return out


KS = (1, 2, 4, 8, 16)


@pytest.mark.parametrize("seed", [0, 1])
def test_equal_to_brute_force(seed):
    x, labels = random_set(seed=seed)
    labels[0] = 999  # one lone query: a Recall miss, left out of MAP@R / R-precision / P@1
    got = evaluate_embeddings(x, labels, recall_k=KS, nmi=False, chunk_size=50)
    want = brute_metrics(x, labels, KS)
    for key, value in want.items():
        assert got[key] == pytest.approx(value, abs=1e-12), key
    assert got["num_queries"] == got["num_items"] == 240 and got["num_classes"] == len(np.unique(labels))
    assert "nmi" not in got


def test_inshop_queries_search_the_gallery_only():
    x, labels = random_set(n=200, seed=3)
    mask = np.zeros(200, bool)
    mask[::2] = True
    x[1] = x[0]  # a gallery duplicate of query 0: must be found
    x[4] = x[2]  # query 4 duplicates query 2: queries never see each other
    labels[4] = 777  # and query 4's class has no gallery item: a lone query
    got = evaluate_embeddings(x, labels, recall_k=KS, query_mask=mask, nmi=False, chunk_size=17)
    want = brute_metrics(x, labels, KS, query_mask=mask)
    for key, value in want.items():
        assert got[key] == pytest.approx(value, abs=1e-12), key
    assert got["num_queries"] == 100 and got["num_items"] == 200


def hand_example():
    # Six unit vectors at these angles (degrees); cosine similarity = cos(angle difference).
    # Classes A A B A B C. Rankings (by angular distance):
    #   0: 1A 2B 3A 4 5   R=2  AP@R = (1/1)/2 = .5    R-prec .5  hit@1
    #   1: 0A 2B 3A 4 5   R=2  AP@R = .5              R-prec .5  hit@1
    #   2: 1A 3A 0A 4B 5  R=1  AP@R = 0               R-prec 0   first hit at rank 4
    #   3: 2B 1A 0A 4B 5  R=2  AP@R = (1/2)/2 = .25   R-prec .5  first hit at rank 2
    #   4: 3A 2B ...      R=1  AP@R = 0               R-prec 0   first hit at rank 2
    #   5: lone class C: Recall miss, left out of MAP@R / R-precision / precision@1.
    angles = np.deg2rad([0, 10, 25, 45, 100, 210])
    x = np.stack([np.cos(angles), np.sin(angles)], axis=1).astype(np.float32)
    return x, np.array([0, 0, 1, 0, 1, 2])


def test_hand_made_example():
    x, labels = hand_example()
    got = evaluate_embeddings(x, labels, recall_k=(1, 2, 4), nmi=False)
    assert got["recall@1"] == pytest.approx(2 / 6)
    assert got["recall@2"] == pytest.approx(4 / 6)
    assert got["recall@4"] == pytest.approx(5 / 6)
    assert got["map@r"] == pytest.approx(1.25 / 5)
    assert got["r_precision"] == pytest.approx(1.5 / 5)
    assert got["precision@1"] == pytest.approx(2 / 5)


def test_building_blocks_on_hand_example():
    nbr = np.array([[0, 1, 0, 1, 2], [0, 1, 0, 1, 2], [0, 0, 0, 1, 2], [1, 0, 0, 1, 2], [0, 1, 0, 0, 2]])
    q = np.array([0, 0, 1, 0, 1])
    r = np.array([2, 2, 1, 2, 1])
    assert recall_at_k(nbr, q, (1, 2, 4)) == pytest.approx({1: 2 / 5, 2: 4 / 5, 4: 1.0})
    assert map_at_r(nbr, q, r) == pytest.approx(1.25 / 5)
    assert r_precision(nbr, q, r) == pytest.approx(1.5 / 5)
    with pytest.raises(ValueError, match="MAP@R needs k"):
        map_at_r(nbr[:, :1], q, r)
    with pytest.raises(ValueError, match="Recall@8"):
        recall_at_k(nbr, q, (8,))


def test_exact_duplicates_and_ties_are_deterministic():
    x, labels = random_set(n=150, seed=4)
    x[10:20] = x[10]  # ten identical items in two classes
    labels[10:15], labels[15:20] = 5, 6
    runs = [evaluate_embeddings(x, labels, recall_k=KS, nmi=False, chunk_size=c) for c in (1, 13, 4096)]
    assert runs[0] == runs[1] == runs[2]
    want = brute_metrics(x, labels, KS)
    for key, value in want.items():
        assert runs[0][key] == pytest.approx(value, abs=1e-12), key


def test_chunk_size_does_not_change_any_result():
    x, labels = random_set(n=300, seed=5)
    ref = evaluate_embeddings(x, labels, recall_k=(1, 10, 100, 1000), nmi=True, chunk_size=4096)
    for chunk in (1, 7, 64):
        assert evaluate_embeddings(x, labels, recall_k=(1, 10, 100, 1000), nmi=True, chunk_size=chunk) == ref
    assert ref["recall@1000"] == 1.0  # K beyond the database: every query with a positive hits


def test_normalises_inside_and_accepts_torch():
    torch = pytest.importorskip("torch")
    x, labels = random_set(n=120, seed=6)
    scaled = x * np.random.default_rng(0).uniform(0.1, 10, (120, 1)).astype(np.float32)
    a = evaluate_embeddings(x, labels, nmi=False)
    b = evaluate_embeddings(torch.from_numpy(scaled), torch.from_numpy(labels), nmi=False)
    assert a == b


def test_all_lone_gives_nan():
    x, _ = random_set(n=20, seed=7)
    got = evaluate_embeddings(x, np.arange(20), recall_k=(1,), nmi=False)
    assert got["recall@1"] == 0.0
    assert math.isnan(got["map@r"]) and math.isnan(got["r_precision"]) and math.isnan(got["precision@1"])


@pytest.mark.parametrize("seed", range(4))
def test_nmi_equals_scikit_learn(seed):
    rng = np.random.default_rng(seed)
    t = rng.integers(0, 1 + 10 * seed, 500)
    p = np.where(rng.random(500) < 0.6, t, rng.integers(0, 15, 500)) * 3 + 1
    assert nmi_score(t, p) == pytest.approx(normalized_mutual_info_score(t, p), abs=1e-12)
    assert nmi_score(t, t) == pytest.approx(1.0)
    assert nmi_score(np.zeros(5), np.arange(5)) == normalized_mutual_info_score(np.zeros(5), np.arange(5))


def test_nmi_of_evaluate_is_sklearn_on_the_kmeans_assignment():
    x, labels = random_set(n=300, seed=8)
    got = evaluate_embeddings(x, labels, nmi=True, kmeans_iters=10, kmeans_redo=3, seed=3)
    xn = x / np.linalg.norm(x, axis=1, keepdims=True)
    assign = kmeans_assign(xn, len(np.unique(labels)), iters=10, redo=3, seed=3)
    assert len(np.unique(assign)) > 1
    assert got["nmi"] == pytest.approx(normalized_mutual_info_score(labels, assign), abs=1e-12)


# ---- k-means: scikit-learn's KMeans (k-means++, best of n_init, Lloyd with tol) on faiss


def blobs(n=600, d=32, classes=20, noise=1.6, spread=0.4, seed=0):
    """Class centres plus per-class isotropic noise, L2-normalised: NMI about 0.65-0.8."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, classes, n)
    sigma = rng.uniform(noise - spread, noise + spread, classes)
    x = rng.standard_normal((classes, d))[labels] + sigma[labels, None] * rng.standard_normal((n, d))
    x = x.astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True), labels


def test_lloyd_from_sklearns_seeds_is_sklearns_kmeans():
    from sklearn.cluster import KMeans, kmeans_plusplus

    from ibc_geo.evaluation.metrics import _lloyd

    x, _ = blobs(seed=1)
    xc = x - x.mean(axis=0)
    tol = float(np.var(xc, axis=0).mean()) * 1e-4
    for s in range(3):
        init, _ = kmeans_plusplus(xc, 20, random_state=s)
        want = KMeans(20, init=init, n_init=1, max_iter=300, tol=1e-4).fit(xc)
        labels, inertia, centroids, n_iter = _lloyd(xc, init.astype(np.float32), 300, tol)
        np.testing.assert_array_equal(labels, want.labels_)
        assert n_iter == want.n_iter_
        assert inertia == pytest.approx(want.inertia_, rel=1e-4)
        np.testing.assert_allclose(centroids, want.cluster_centers_, atol=1e-5)


def test_nmi_close_to_sklearn_kmeans_n_init_10():
    from sklearn.cluster import KMeans

    ours, theirs = [], []
    for s in range(3):
        x, labels = blobs(seed=s)
        ours.append(normalized_mutual_info_score(labels, kmeans_assign(x, 20, iters=300, redo=10, seed=s)))
        theirs.append(normalized_mutual_info_score(labels, KMeans(20, n_init=10, random_state=s).fit(x).labels_))
    assert 0.6 < np.mean(theirs) < 0.85
    assert np.mean(ours) == pytest.approx(np.mean(theirs), abs=0.03)  # measured: 0.0004
    np.testing.assert_allclose(ours, theirs, atol=0.06)  # measured: at most 0.027


def test_kmeans_is_deterministic_under_a_seed():
    x, _ = blobs(seed=2)
    a = kmeans(x, 20, iters=50, redo=3, seed=7)
    b = kmeans(x, 20, iters=50, redo=3, seed=7)
    np.testing.assert_array_equal(a.labels, b.labels)
    np.testing.assert_array_equal(a.centroids, b.centroids)
    assert a.inertia == b.inertia
    others = [kmeans_assign(x, 20, iters=50, redo=1, seed=s) for s in range(3)]
    assert any(not np.array_equal(others[0], o) for o in others[1:])


def test_more_restarts_never_give_higher_inertia():
    x, _ = blobs(seed=3)
    runs = list(iter_kmeans(x, 20, iters=300, redo=8, seed=5))
    assert [r.restart for r in runs] == list(range(8))
    assert len({round(r.inertia, 6) for r in runs}) > 1  # the restarts differ
    best = [kmeans(x, 20, iters=300, redo=r, seed=5) for r in (1, 2, 4, 8)]
    for r, got in zip((1, 2, 4, 8), best):
        assert got.inertia == min(run.inertia for run in runs[:r])  # restart i is the same run for any redo
        assert got.restarts == r
        np.testing.assert_array_equal(got.labels, runs[got.restart].labels)
    assert all(a.inertia >= b.inertia for a, b in zip(best, best[1:]))


def test_inertia_and_labels_are_consistent():
    x, _ = blobs(seed=4)
    got = kmeans(x, 20, iters=300, redo=2, seed=0)
    d = ((x[:, None, :].astype(np.float64) - got.centroids[None].astype(np.float64)) ** 2).sum(-1)
    np.testing.assert_array_equal(got.labels, d.argmin(axis=1))  # every point at its nearest centroid
    assert got.inertia == pytest.approx(d.min(axis=1).sum(), rel=1e-5)
    assert 1 <= got.n_iter < 300  # stopped on convergence


def test_kmeans_plusplus_draws_like_sklearns():
    # Same algorithm (greedy, 2 + ln k trials): the mean potential left by the seeds agrees.
    from sklearn.cluster import kmeans_plusplus as sk_kmeans_plusplus

    x, _ = blobs(n=400, d=16, seed=5)
    ours, theirs = [], []
    for s in range(30):
        a = x[kmeans_plusplus(x, 20, np.random.default_rng(s))]
        b, _ = sk_kmeans_plusplus(x, 20, random_state=s)
        for c, out in ((a, ours), (b, theirs)):
            out.append(((x[:, None] - c[None]) ** 2).sum(-1).min(axis=1).sum())
    assert np.mean(ours) == pytest.approx(np.mean(theirs), rel=0.03)
    random_init = [((x[:, None] - x[np.random.default_rng(s).choice(400, 20, replace=False)][None]) ** 2)
                   .sum(-1).min(axis=1).sum() for s in range(30)]
    assert np.mean(ours) < 0.97 * np.mean(random_init)


def far_groups(groups=10, per_group=30, seed=0):
    """``groups`` tight groups (unit variance) on a line, 100 apart, and each point's group."""
    rng = np.random.default_rng(seed)
    group = np.repeat(np.arange(groups), per_group)
    x = np.stack([100.0 * group, np.zeros(len(group))], axis=1) + rng.standard_normal((len(group), 2))
    return x.astype(np.float32), group


def test_kmeans_plusplus_seeds_are_d2_sampled_points():
    # D^2 sampling puts one seed in each group (an uncovered group's points weigh ~1e4 each, a
    # covered group's ~2); a uniformly random init covers all 10 with probability 10!/10^10.
    x, group = far_groups()
    for s in range(10):
        seeds = kmeans_plusplus(x, 10, np.random.default_rng(s))
        assert seeds.dtype == np.int64 and len(set(seeds.tolist())) == 10
        assert sorted(group[seeds].tolist()) == list(range(10))
    with pytest.raises(ValueError, match="num_clusters"):
        kmeans_plusplus(x, 301, np.random.default_rng(0))


def test_kmeans_plusplus_matters_where_a_random_init_fails():
    # From a random init Lloyd stops in a local minimum (some groups split, others merged);
    # seeded by k-means++ every single restart finds the ten groups.
    from ibc_geo.evaluation.metrics import _lloyd

    x, group = far_groups()
    for s in range(5):
        got = kmeans(x, 10, iters=300, redo=1, seed=s)
        assert normalized_mutual_info_score(group, got.labels) == pytest.approx(1.0)
        assert got.inertia < 2 * len(x) * 1.5
    failed = 0
    for s in range(5):
        init = x[np.random.default_rng(s).choice(len(x), 10, replace=False)]
        failed += _lloyd(x, init, 300, 0.0)[1] > 1e4
    assert failed >= 4


def test_kmeans_with_fewer_distinct_points_than_clusters():
    x = np.repeat(np.eye(3, 4, dtype=np.float32), 5, axis=0)  # 15 points, 3 distinct
    got = kmeans(x, 5, iters=20, redo=2, seed=0)
    assert got.labels.shape == (15,) and 0 <= got.labels.min() and got.labels.max() < 5
    assert got.inertia == pytest.approx(0.0, abs=1e-6)
    assert normalized_mutual_info_score(np.repeat(np.arange(3), 5), got.labels) == pytest.approx(1.0)


def test_restarts_are_capped_at_large_n_times_k():
    from ibc_geo.evaluation import KMEANS_MAX_PAIRS, kmeans_restarts

    assert KMEANS_MAX_PAIRS == 2 ** 26
    for n, k in ((5924, 100), (8131, 98)):  # CUB, Cars: scikit-learn's n_init=10
        assert kmeans_restarts(n, k, 10) == 10
    assert kmeans_restarts(8900, 1698, 10) == 4  # an SOP-sized validation split
    assert kmeans_restarts(26830, 3985, 10) == kmeans_restarts(60502, 11316, 10) == 1  # In-Shop, SOP
    assert kmeans_restarts(60502, 11316, 10, max_pairs=None) == 10
    assert kmeans_restarts(100, 10, 10, max_pairs=2500) == 2
    x, _ = blobs(n=200, seed=7)
    capped = kmeans(x, 10, redo=5, seed=1, max_pairs=200 * 10 * 2)
    assert capped.restarts == 2
    assert capped.inertia == min(r.inertia for r in iter_kmeans(x, 10, redo=2, seed=1))
    assert kmeans(x, 10, redo=5, seed=1, max_pairs=None).restarts == 5


def test_kmeans_argument_checks():
    x, _ = blobs(n=50, seed=6)
    for kwargs in ({"iters": 0}, {"redo": 0}, {"tol": -1.0}):
        with pytest.raises(ValueError):
            kmeans(x, 5, **kwargs)
    with pytest.raises(ValueError, match="num_clusters"):
        kmeans(x, 0)


def test_format_table():
    text = format_table({"recall@10": 0.5, "recall@2": 0.91234, "map@r": 0.25, "num_items": 60502})
    lines = text.splitlines()
    assert lines[2].split() == ["recall@2", "91.23"]
    assert lines[3].split() == ["recall@10", "50.00"]
    assert lines[4].split() == ["map@r", "25.00"]
    assert lines[5].split() == ["num_items", "60502"]
    assert len({len(line) for line in lines}) == 1
