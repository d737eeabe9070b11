"""Retrieval and clustering metrics of deep metric learning, exact and bounded in memory.

Definitions (all values are fractions in [0, 1]):

* **Recall@K** (the DML "recall", Song et al. 2016): fraction of queries with at least one item
  of their class among their K nearest neighbours. Every query counts; a query whose class has
  no other item (a *lone* query) is a miss, as in the paper's code.
* **Precision@1**, **R-precision** and **MAP@R** (Musgrave et al., *A Metric Learning Reality
  Check*, ECCV 2020): with R = the number of other items of the query's class in the searched
  set, R-precision = (same-class items among the first R neighbours) / R and
  AP@R = (1/R) sum_{i<=R} P(i) rel(i), P(i) the precision over the first i neighbours and
  rel(i) = 1 when neighbour i shares the class. Means over the queries with R >= 1; lone
  queries are left out, as pytorch-metric-learning's ``AccuracyCalculator`` does (NaN when
  every query is lone). Without lone queries precision@1 equals Recall@1.
* **NMI**: k-means with k = the number of classes as the official code's scikit-learn
  ``KMeans(k)`` (k-means++ seeding, ``n_init`` = 10 restarts keeping the lowest inertia, Lloyd
  iterations up to ``max_iter`` = 300 with its ``tol`` = 1e-4 early stop), computed with faiss
  (:func:`kmeans`; all points, no subsampling, seeded, deterministic; fewer restarts at large
  N x k, e.g. one on In-Shop and SOP: :func:`kmeans_restarts`), then mutual information over
  the arithmetic mean of the two entropies, exactly as scikit-learn's
  ``normalized_mutual_info_score`` (its default ``average_method="arithmetic"``). On In-Shop it clusters all test items, queries and gallery.

Neighbours come from :mod:`ibc_geo.evaluation.knn`: ties by index, the query excluded by index.
:func:`evaluate_embeddings` runs ONE search with k = max(largest K, largest R) and reduces each
chunk of results to per-query numbers at once, so Recall@1..1000 and MAP@R share the search and
no [N, k] array is ever kept.
"""
from __future__ import annotations

import logging
import math
import warnings
from typing import Dict, Iterable, Iterator, Mapping, NamedTuple, Optional, Sequence

import faiss
import numpy as np

from ibc_geo.evaluation.knn import as_float32_matrix, l2_normalize
from ibc_geo.evaluation.retrieval import RetrievalResult, retrieve_split, split_layout

__all__ = [
    "KMEANS_MAX_PAIRS",
    "KMeansResult",
    "average_precision_at_r",
    "evaluate_embeddings",
    "first_match_rank",
    "format_table",
    "iter_kmeans",
    "kmeans",
    "kmeans_assign",
    "kmeans_plusplus",
    "kmeans_restarts",
    "map_at_r",
    "nmi_score",
    "r_precision",
    "recall_at_k",
    "retrieval_metrics",
]

logger = logging.getLogger("ibc_geo")

NO_MATCH = np.iinfo(np.int32).max  # first_match_rank of a query with no same-class neighbour
_AP_BLOCK_ENTRIES = 1 << 22  # rows x R of one block of the MAP@R computation
KMEANS_MAX_PAIRS = 1 << 26  # restarts x N x k above which k-means runs fewer restarts (kmeans_restarts)


def _as_labels(labels, name: str = "labels") -> np.ndarray:
    if hasattr(labels, "detach"):
        labels = labels.detach().cpu().numpy()
    labels = np.asarray(labels)
    if labels.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {labels.shape}")
    return labels


def _matches(neighbor_labels, query_labels) -> np.ndarray:
    neighbor_labels = np.asarray(neighbor_labels)
    query_labels = _as_labels(query_labels, "query_labels")
    if neighbor_labels.ndim != 2 or neighbor_labels.shape[0] != query_labels.shape[0]:
        raise ValueError(f"neighbor_labels must be [Q, k] with Q = len(query_labels) = "
                         f"{query_labels.shape[0]}, got shape {neighbor_labels.shape}")
    return neighbor_labels == query_labels[:, None]


def first_match_rank(matches: np.ndarray) -> np.ndarray:
    """0-based rank of each row's first True (``NO_MATCH`` when none): int32 [Q]."""
    if matches.shape[1] == 0:
        return np.full(matches.shape[0], NO_MATCH, np.int32)
    first = matches.argmax(axis=1).astype(np.int32)
    first[~matches[np.arange(matches.shape[0]), first]] = NO_MATCH
    return first


def average_precision_at_r(matches: np.ndarray, num_relevant: np.ndarray):
    """Per-query AP@R and R-precision (float64 [Q] each; NaN where R = 0).

    ``matches`` [Q, k] bool (neighbour j shares the query's class, neighbours in rank order),
    ``num_relevant`` [Q] the R of each query; needs k >= max R.
    """
    num_relevant = np.asarray(num_relevant, dtype=np.int64)
    q = matches.shape[0]
    ap = np.full(q, np.nan)
    rp = np.full(q, np.nan)
    r_max = int(num_relevant.max()) if q else 0
    if r_max == 0:
        return ap, rp
    if matches.shape[1] < r_max:
        raise ValueError(f"MAP@R needs k >= the largest R = {r_max}; got only {matches.shape[1]} "
                         "neighbours per query (choose k from the class sizes)")
    ranks = np.arange(1, r_max + 1)
    block = max(1, _AP_BLOCK_ENTRIES // r_max)
    for s in range(0, q, block):
        r = num_relevant[s:s + block]
        hits = matches[s:s + block, :r_max] & (ranks <= r[:, None])
        cum = np.cumsum(hits, axis=1, dtype=np.int64)
        with np.errstate(invalid="ignore", divide="ignore"):
            ap[s:s + block] = (cum / ranks * hits).sum(axis=1) / r
            rp[s:s + block] = cum[:, -1] / r
    ap[num_relevant == 0] = np.nan
    rp[num_relevant == 0] = np.nan
    return ap, rp


def recall_at_k(neighbor_labels, query_labels, ks: Iterable[int]) -> Dict[int, float]:
    """Recall@K for each K from ranked neighbour labels [Q, k] (k >= max K): {K: fraction}."""
    ks = [int(x) for x in ks]
    matches = _matches(neighbor_labels, query_labels)
    if ks and max(ks) > matches.shape[1]:
        raise ValueError(f"Recall@{max(ks)} needs at least {max(ks)} neighbours per query, "
                         f"got {matches.shape[1]}")
    first = first_match_rank(matches)
    return {k: float(np.mean(first < k)) if first.size else math.nan for k in ks}


def map_at_r(neighbor_labels, query_labels, num_relevant) -> float:
    """MAP@R over queries with R >= 1 from ranked neighbour labels [Q, k], k >= max R."""
    ap, _ = average_precision_at_r(_matches(neighbor_labels, query_labels), num_relevant)
    return _nanmean(ap)


def r_precision(neighbor_labels, query_labels, num_relevant) -> float:
    """R-precision over queries with R >= 1 from ranked neighbour labels [Q, k], k >= max R."""
    _, rp = average_precision_at_r(_matches(neighbor_labels, query_labels), num_relevant)
    return _nanmean(rp)


def _nanmean(x: np.ndarray) -> float:
    valid = ~np.isnan(x)
    return float(x[valid].mean()) if valid.any() else math.nan


def _entropy(counts: np.ndarray) -> float:
    p = counts[counts > 0] / counts.sum()
    return float(-(p * np.log(p)).sum())


def nmi_score(labels_true, labels_pred) -> float:
    """Normalised mutual information, arithmetic mean of the entropies (scikit-learn's default)."""
    labels_true, labels_pred = _as_labels(labels_true, "labels_true"), _as_labels(labels_pred, "labels_pred")
    if labels_true.shape != labels_pred.shape:
        raise ValueError(f"labels_true and labels_pred differ in length: {labels_true.shape} vs {labels_pred.shape}")
    n = labels_true.shape[0]
    _, t = np.unique(labels_true, return_inverse=True)
    _, p = np.unique(labels_pred, return_inverse=True)
    n_t, n_p = int(t.max()) + 1 if n else 0, int(p.max()) + 1 if n else 0
    if n_t == n_p == 1 or n_t == n_p == 0:  # scikit-learn: identical trivial partitions
        return 1.0
    pair, nij = np.unique(t.astype(np.int64) * n_p + p, return_counts=True)
    a = np.bincount(t, minlength=n_t).astype(np.float64)
    b = np.bincount(p, minlength=n_p).astype(np.float64)
    ai, bj = a[pair // n_p], b[pair % n_p]
    pij = nij / n
    mi = max(float((pij * (np.log(nij) + math.log(n) - np.log(ai) - np.log(bj))).sum()), 0.0)
    if mi == 0.0:
        return 0.0
    return float(mi / ((_entropy(a) + _entropy(b)) / 2))


class KMeansResult(NamedTuple):
    """One k-means run: the kept restart of :func:`kmeans`, or one restart of :func:`iter_kmeans`."""

    labels: np.ndarray  # int64 [N]: nearest final centroid of each point
    centroids: np.ndarray  # float32 [k, D]
    inertia: float  # sum over the points of the squared distance to their centroid
    n_iter: int  # Lloyd iterations of the kept restart
    restart: int  # index of the kept restart (0-based)
    restarts: int  # restarts run (iter_kmeans: so far)


def kmeans_plusplus(x, num_clusters: int, rng: np.random.Generator,
                    n_local_trials: Optional[int] = None) -> np.ndarray:
    """Indices (int64 [k]) of the k-means++ seeds of ``x``: scikit-learn's greedy variant.

    The first seed is a uniformly drawn point; every further one is the best, by the potential
    (sum of squared distances of all points to their nearest seed) it leaves, of
    ``n_local_trials`` candidates (default 2 + int(ln k), as ``sklearn.cluster.kmeans_plusplus``)
    drawn with probability proportional to D(x)^2, the squared distance to the nearest seed so
    far. Exact: every candidate is compared with every point (one [trials, D] x [D, N] product
    per seed), so the cost is about ``n_local_trials`` Lloyd iterations.
    """
    x = as_float32_matrix(x)
    n = x.shape[0]
    k = int(num_clusters)
    if not 1 <= k <= n:
        raise ValueError(f"num_clusters must be in [1, {n}], got {num_clusters}")
    trials = 2 + int(np.log(k)) if n_local_trials is None else int(n_local_trials)
    if trials < 1:
        raise ValueError(f"n_local_trials must be >= 1, got {n_local_trials}")
    xsq = np.einsum("ij,ij->i", x, x)
    seeds = np.empty(k, np.int64)
    seeds[0] = rng.integers(n)
    closest = _sq_dists(x[seeds[:1]], x, xsq)[0]
    pot = float(closest.sum(dtype=np.float64))
    for c in range(1, k):
        cand = np.searchsorted(np.cumsum(closest, dtype=np.float64), rng.random(trials) * pot)
        np.minimum(cand, n - 1, out=cand)
        d = _sq_dists(x[cand], x, xsq)
        np.minimum(d, closest, out=d)
        pots = d.sum(axis=1, dtype=np.float64)
        best = int(np.argmin(pots))
        seeds[c], closest, pot = cand[best], d[best], float(pots[best])
    return seeds


def _sq_dists(a: np.ndarray, x: np.ndarray, xsq: np.ndarray) -> np.ndarray:
    """Squared Euclidean distances [len(a), N] of rows ``a`` to every row of ``x``, float32, >= 0."""
    d = a @ x.T
    d *= -2.0
    d += xsq
    d += np.einsum("ij,ij->i", a, a)[:, None]
    np.maximum(d, 0.0, out=d)
    return d


def _assign(x: np.ndarray, centroids: np.ndarray):
    """Exact nearest centroid (faiss, squared L2): distances float32 [N], labels int64 [N]."""
    index = faiss.IndexFlatL2(x.shape[1])
    index.add(np.ascontiguousarray(centroids))
    dist, labels = index.search(x, 1)
    return dist[:, 0], labels[:, 0]


def _reassign(x: np.ndarray, centroids: np.ndarray, labels: np.ndarray, dist: np.ndarray,
              moved: np.ndarray):
    """The assignment step after only the centroids ``moved`` changed; the same result as
    :func:`_assign` (up to float rounding of exact ties).

    ``labels``/``dist``: the previous assignment (nearest of the previous centroids and the
    squared distance to it). A point whose centroid did not move is still nearest to it among
    the unmoved centroids, so it is compared with the moved ones only; the points of moved
    centroids are searched against all. The cost is N x |moved| + |their points| x k instead of
    N x k, which makes the many late iterations with few changes cheap.
    """
    k = centroids.shape[0]
    if moved.size == 0:
        return dist, labels
    if 2 * moved.size >= k:
        return _assign(x, centroids)
    was_moved = np.zeros(k, bool)
    was_moved[moved] = True
    hit = was_moved[labels]
    dist, labels = dist.copy(), labels.copy()
    static = np.flatnonzero(~hit)
    if static.size:
        d_m, j_m = _assign(x[static], centroids[moved])
        cand = moved[j_m]
        closer = (d_m < dist[static]) | ((d_m == dist[static]) & (cand < labels[static]))
        dist[static[closer]], labels[static[closer]] = d_m[closer], cand[closer]
    rest = np.flatnonzero(hit)
    if rest.size:
        dist[rest], labels[rest] = _assign(x[rest], centroids)
    return dist, labels


def _update(x: np.ndarray, labels: np.ndarray, dist: np.ndarray, old: np.ndarray) -> np.ndarray:
    """Means of the clusters; an empty cluster takes the farthest point (scikit-learn's rule)."""
    k = old.shape[0]
    counts = np.bincount(labels, minlength=k)
    order = np.argsort(labels, kind="stable")
    sums = np.zeros_like(old)
    full = np.flatnonzero(counts)
    starts = (np.cumsum(counts) - counts)[full]
    sums[full] = np.add.reduceat(x[order], starts, axis=0)
    empty = np.flatnonzero(counts == 0)
    if empty.size:  # the points farthest from their centroids, farthest first, found new clusters
        far = np.argpartition(-dist, empty.size - 1)[:empty.size]
        far = far[np.argsort(-dist[far], kind="stable")]
        for p, e in zip(far, empty):
            sums[labels[p]] -= x[p]
            counts[labels[p]] -= 1
            sums[e] = x[p]
            counts[e] = 1
    out = old.copy()
    full = counts > 0
    out[full] = sums[full] / counts[full, None]
    return out


def _lloyd(x: np.ndarray, centroids: np.ndarray, iters: int, tol: float):
    """scikit-learn's Lloyd loop (``_kmeans_single_lloyd``) with faiss for the assignment step.

    Stops after ``iters`` iterations, when no label changed (strict convergence: the next
    iteration would change nothing), or when the total squared centroid shift is <= ``tol``
    (absolute); then assigns once more so that labels match the final centroids. After the
    first, each assignment step searches only what the moved centroids can change
    (:func:`_reassign`).
    """
    labels_old = None
    strict = False
    n_iter = 0
    dist, labels = _assign(x, centroids)
    for n_iter in range(1, iters + 1):
        if n_iter > 1:
            dist, labels = _reassign(x, centroids, labels, dist, moved)
        new = _update(x, labels, dist, centroids)
        shift = float(np.square(new - centroids, dtype=np.float64).sum())
        moved = np.flatnonzero((new != centroids).any(axis=1))
        centroids = new
        if labels_old is not None and np.array_equal(labels, labels_old):
            strict = True
            break
        if shift <= tol:
            break
        labels_old = labels
    if not strict:
        dist, labels = _reassign(x, centroids, labels, dist, moved)
    return labels, float(dist.sum(dtype=np.float64)), centroids, n_iter


def iter_kmeans(embeddings, num_clusters: int, iters: int = 300, redo: int = 10, seed: int = 0,
                tol: float = 1e-4) -> Iterator[KMeansResult]:
    """The ``redo`` restarts of :func:`kmeans` one by one, each as its own :class:`KMeansResult`."""
    x = as_float32_matrix(embeddings)
    n = x.shape[0]
    k = int(num_clusters)
    if not 1 <= k <= n:
        raise ValueError(f"num_clusters must be in [1, {n}], got {num_clusters}")
    if int(iters) < 1 or int(redo) < 1:
        raise ValueError(f"iters and redo must be >= 1, got {iters} and {redo}")
    if not tol >= 0:
        raise ValueError(f"tol must be >= 0, got {tol}")
    mean = x.mean(axis=0, dtype=np.float64)
    x = (x - mean).astype(np.float32)
    tol_abs = float(np.var(x, axis=0, dtype=np.float64).mean()) * float(tol)
    for r, child in enumerate(np.random.SeedSequence(int(seed)).spawn(int(redo))):
        seeds = kmeans_plusplus(x, k, np.random.default_rng(child))
        labels, inertia, centroids, n_iter = _lloyd(x, x[seeds], int(iters), tol_abs)
        yield KMeansResult(labels.astype(np.int64), (centroids + mean).astype(np.float32), inertia,
                           n_iter, r, r + 1)


def kmeans_restarts(num_points: int, num_clusters: int, redo: int,
                    max_pairs: Optional[int] = KMEANS_MAX_PAIRS) -> int:
    """Restarts :func:`kmeans` runs: ``redo``, but at most ``max_pairs // (N k)`` (at least 1).

    Every restart costs ~2 + ln k + (its Lloyd iterations) passes over the N x k point-centroid
    pairs (greedy k-means++ seeding alone is 2 + ln k of them), so at large N x k the restarts
    are capped; there the NMI hardly depends on them: on SOP-shaped data with k = 1,132 one
    restart is 0.1 NMI points from scikit-learn's ``n_init=10`` (benchmarks/RESULTS_eval.md),
    while at k = 100 (CUB) the best of 10 is ~4 points above a single run. With the default
    2^26 pairs CUB (5,924 x 100) and Cars keep ``redo`` = 10, an SOP-sized validation split
    (~8,900 x 1,700) runs 4, In-Shop (26,830 x 3,985) and SOP's test split (60,502 x 11,316) 1.
    ``max_pairs=None``: no cap.
    """
    redo = int(redo)
    if redo < 1:
        raise ValueError(f"redo must be >= 1, got {redo}")
    if max_pairs is None:
        return redo
    return max(1, min(redo, int(max_pairs) // max(1, int(num_points) * int(num_clusters))))


def kmeans(embeddings, num_clusters: int, iters: int = 300, redo: int = 10, seed: int = 0,
           tol: float = 1e-4, max_pairs: Optional[int] = KMEANS_MAX_PAIRS) -> KMeansResult:
    """scikit-learn's ``KMeans(k, init="k-means++", n_init=redo, max_iter=iters, tol=tol)`` on faiss.

    ``redo`` restarts (capped at large N x k, :func:`kmeans_restarts`), each seeded by
    :func:`kmeans_plusplus` and refined by Lloyd iterations (at most ``iters``; early stop as
    scikit-learn: no label changed, or the total squared centroid shift <= ``tol`` x the mean
    per-feature variance of the data); the restart of lowest inertia is kept (the first on
    ties). Restart r draws from ``SeedSequence(seed).spawn(...)[r]``, which does not depend on
    ``redo``: the first r restarts of a longer run are the same runs, so more restarts never
    give a higher inertia. All points train (no subsampling); the data is centred on its mean
    first, as scikit-learn does, which does not change the clustering.
    """
    x = as_float32_matrix(embeddings)
    restarts = kmeans_restarts(x.shape[0], num_clusters, redo, max_pairs)
    if restarts < int(redo):
        logger.info("k-means: %d restart(s) instead of %d at N x k = %d x %d (cap %s pairs)",
                    restarts, int(redo), x.shape[0], int(num_clusters), max_pairs)
    best = None
    for run in iter_kmeans(x, num_clusters, iters=iters, redo=restarts, seed=seed, tol=tol):
        if best is None or run.inertia < best.inertia:
            best = run
    return best._replace(restarts=restarts)


def kmeans_assign(embeddings, num_clusters: int, iters: int = 300, redo: int = 10, seed: int = 0,
                  tol: float = 1e-4, max_pairs: Optional[int] = KMEANS_MAX_PAIRS) -> np.ndarray:
    """Cluster of each row, int64 [N], from :func:`kmeans` (k-means++, best of ``redo``)."""
    return kmeans(embeddings, num_clusters, iters=iters, redo=redo, seed=seed, tol=tol,
                  max_pairs=max_pairs).labels


def num_relevant(result: RetrievalResult, codes: np.ndarray) -> np.ndarray:
    """R of each query: the database items of its class, itself not counted."""
    num_classes = int(codes.max()) + 1 if codes.size else 0
    counts = np.bincount(codes[result.gallery_items], minlength=num_classes)
    return counts[codes[result.query_items]] - int(result.exclude_self)


def required_k(ks: Sequence[int], codes: np.ndarray, query_mask=None) -> int:
    """The neighbours :func:`retrieval_metrics` needs: max(largest K, largest R), capped at what a
    query can retrieve."""
    query_items, gallery_items, exclude_self = split_layout(len(codes), query_mask)
    num_classes = int(codes.max()) + 1
    r = np.bincount(codes[gallery_items], minlength=num_classes)[codes[query_items]] - int(exclude_self)
    return min(gallery_items.size - int(exclude_self), max(max(ks), int(r.max())))


def retrieval_metrics(result: RetrievalResult, codes: np.ndarray, ks: Sequence[int],
                      chunk_size: int = 4096) -> Dict[str, float]:
    """Recall@K (every query; a lone one is a miss), MAP@R, R-precision and precision@1 (queries with
    R >= 1) of ``result`` with the item labels ``codes`` (int [N]), reduced chunk by chunk.

    ``result`` must hold at least :func:`required_k` neighbours (ks and the largest R).
    """
    codes = np.asarray(codes)
    relevant = num_relevant(result, codes)
    q = result.num_queries
    first = np.empty(q, np.int32)
    ap = np.empty(q)
    rp = np.empty(q)
    p1 = np.empty(q, bool)
    for start in range(0, q, chunk_size):
        rows = slice(start, min(start + chunk_size, q))
        matches = result.matches(codes, rows)
        first[rows] = first_match_rank(matches)
        p1[rows] = matches[:, 0]
        ap[rows], rp[rows] = average_precision_at_r(matches, relevant[rows])
    not_lone = relevant > 0
    out = {f"recall@{k}": float(np.mean(first < k)) for k in sorted(set(ks))}
    out["map@r"] = _nanmean(ap)
    out["r_precision"] = _nanmean(rp)
    out["precision@1"] = float(p1[not_lone].mean()) if not_lone.any() else math.nan
    return out


def evaluate_embeddings(embeddings, labels, recall_k: Sequence[int] = (1, 2, 4, 8),
                        query_mask=None, nmi: bool = True, kmeans_iters: int = 300, kmeans_redo: int = 10,
                        seed: int = 0, chunk_size: int = 4096, min_k: int = 0, return_retrieval: bool = False,
                        database_embeddings=None):
    """All retrieval metrics of a test set from one exact search, plus NMI.

    Args:
        embeddings: [N, D] float (numpy or torch); L2-normalised here (cosine similarity).
        labels: [N] class labels (any values numpy can sort).
        recall_k: the Ks of Recall@K (default: CUB/Cars' 1 2 4 8).
        query_mask: optional bool [N]; True = query, False = gallery (In-Shop): queries search
            the gallery only. Without it every item is a query searching all the others.
        nmi: also cluster with :func:`kmeans` (k = number of classes over all N items) and
            report NMI.
        kmeans_iters, kmeans_redo, seed: k-means' iterations per restart (at most), restarts
            (capped at large N x k: :func:`kmeans_restarts`) and seed; the defaults are those of
            ``eval.kmeans_iters``, ``eval.kmeans_redo`` and ``seed`` in the config schema.
        chunk_size: queries per search call; any value gives the same results.
        min_k: keep at least this many neighbours per query in the retrieval result (for a
            refinement or a picture that reads it; capped at what a query can retrieve).
        return_retrieval: also return the :class:`~ibc_geo.evaluation.retrieval.RetrievalResult`
            of the one search the metrics were computed from.
        database_embeddings: [N, D], the items the queries search when they are not ``embeddings``
            themselves (alpha query expansion: expanded queries, original database); L2-normalised.

    Returns:
        dict with ``recall@K`` for each K, ``map@r``, ``r_precision``, ``precision@1`` and
        ``nmi`` (when ``nmi``) as floats, and ``num_queries``, ``num_items``, ``num_classes``
        as ints; with ``return_retrieval`` the pair ``(metrics, retrieval)``. Lone queries (no
        other item of their class to find) are misses for Recall@K and are left out of
        precision@1, R-precision and MAP@R (module docstring).
    """
    x = l2_normalize(embeddings)
    db = None if database_embeddings is None else l2_normalize(database_embeddings)
    labels = _as_labels(labels)
    n = x.shape[0]
    if labels.shape[0] != n:
        raise ValueError(f"{n} embeddings but {labels.shape[0]} labels")
    if n < 2:
        raise ValueError(f"need at least 2 items to evaluate retrieval, got {n}")
    ks = sorted({int(k) for k in recall_k})
    if not ks or ks[0] < 1:
        raise ValueError(f"recall_k must hold positive integers, got {list(recall_k)}")
    classes, codes = np.unique(labels, return_inverse=True)
    codes = codes.astype(np.int32).reshape(-1)
    num_classes = classes.shape[0]
    if query_mask is not None:
        query_mask = _as_labels(query_mask, "query_mask")
    k = max(required_k(ks, codes, query_mask), int(min_k))
    retrieval = retrieve_split(x, k, query_mask=query_mask, chunk_size=chunk_size, database_embeddings=db)
    available = retrieval.num_database - int(retrieval.exclude_self)
    if ks[-1] >= available:
        warnings.warn(f"Recall@{ks[-1]} with only {available} items to retrieve per query: every K >= "
                      f"{available} is trivially 1 (Recall@K is meaningful for K below the gallery size)",
                      UserWarning, stacklevel=2)
    if num_classes < 2:
        warnings.warn("the evaluation set holds a single class: every neighbour is a match, so Recall@K, "
                      "MAP@R and NMI say nothing about the embedding", UserWarning, stacklevel=2)
    out: Dict[str, float | int] = retrieval_metrics(retrieval, codes, ks, chunk_size=chunk_size)
    if nmi:
        out["nmi"] = nmi_score(codes, kmeans_assign(x, num_classes, iters=kmeans_iters, redo=kmeans_redo, seed=seed))
    out["num_queries"] = int(retrieval.num_queries)
    out["num_items"] = int(n)
    out["num_classes"] = int(num_classes)
    return (out, retrieval) if return_retrieval else out


#: The fraction metrics of :func:`evaluate_embeddings` besides ``recall@K``, in table order.
FRACTION_METRICS = ("map@r", "r_precision", "precision@1", "nmi")
_FRACTION_ORDER = FRACTION_METRICS


def metric_names(recall_k: Sequence[int], nmi: bool = True) -> list:
    """The fraction metrics :func:`evaluate_embeddings` returns for these Ks (what
    ``eval.metric`` may select on, what the trainer logs)."""
    return [f"recall@{k}" for k in recall_k] + [m for m in FRACTION_METRICS if nmi or m != "nmi"]


def recall_k_of(key: str):
    """``"recall@4"`` -> 4; ``None`` for any other key."""
    head, _, k = key.partition("@")
    return int(k) if head == "recall" and k.isdigit() else None


def is_fraction_metric(key: str) -> bool:
    """Whether ``key`` of the metrics dict is a fraction in [0, 1] (shown in %), not a count."""
    return recall_k_of(key) is not None or key in FRACTION_METRICS


_is_fraction_key = is_fraction_metric


def format_table(metrics: Mapping[str, object]) -> str:
    """Aligned two-column text table; fraction metrics as percentages with 2 decimals."""
    recall = sorted((k for k in metrics if k.startswith("recall@")),
                    key=lambda k: int(k.split("@", 1)[1]) if k.split("@", 1)[1].isdigit() else 0)
    keys = recall + [k for k in _FRACTION_ORDER if k in metrics]
    keys += [k for k in metrics if k not in keys]
    rows = []
    for key in keys:
        value = metrics[key]
        if _is_fraction_key(key) and isinstance(value, (float, int, np.floating)) and not isinstance(value, bool):
            text = "nan" if math.isnan(float(value)) else f"{100 * float(value):.2f}"
        elif isinstance(value, (float, np.floating)):
            text = f"{float(value):.4g}"
        else:
            text = str(value)
        rows.append((key, text))
    width_k = max([len("metric")] + [len(k) for k, _ in rows])
    width_v = max([len("value")] + [len(v) for _, v in rows])
    lines = [f"{'metric':<{width_k}}  {'value':>{width_v}}", f"{'-' * width_k}  {'-' * width_v}"]
    lines += [f"{k:<{width_k}}  {v:>{width_v}}" for k, v in rows]
    return "\n".join(lines)
