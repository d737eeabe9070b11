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
* **NMI**: faiss k-means (Lloyd, Euclidean, ``niter`` iterations, ``seed``, centroids
  initialised from a random sample of the points, one run, no subsampling of the points)
  with k = the number of classes, then mutual information over the arithmetic mean of the two
  entropies, exactly as scikit-learn's ``normalized_mutual_info_score`` (its default
  ``average_method="arithmetic"``). On In-Shop it clusters all test items, queries and gallery.

Neighbours come from :mod:`ibc_geo.evaluation.knn`: ties by index, the query excluded by index.
:func:`evaluate_embeddings` runs ONE search with k = max(largest K, largest R) and reduces each
chunk of results to per-query numbers at once, so Recall@1..1000 and MAP@R share the search and
no [N, k] array is ever kept.
"""
from __future__ import annotations

import math
from typing import Dict, Iterable, Mapping, Optional, Sequence

import faiss
import numpy as np

from ibc_geo.evaluation.knn import as_float32_matrix, iter_knn, l2_normalize

__all__ = [
    "average_precision_at_r",
    "evaluate_embeddings",
    "first_match_rank",
    "format_table",
    "kmeans_assign",
    "map_at_r",
    "nmi_score",
    "r_precision",
    "recall_at_k",
]

NO_MATCH = np.iinfo(np.int32).max  # first_match_rank of a query with no same-class neighbour
_AP_BLOCK_ENTRIES = 1 << 22  # rows x R of one block of the MAP@R computation


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


def kmeans_assign(embeddings, num_clusters: int, iters: int = 20, seed: int = 0) -> np.ndarray:
    """faiss k-means (Euclidean Lloyd, ``iters`` iterations, ``seed``) -> cluster of each row, int64 [N].

    All points train (no subsampling); centroids start at ``num_clusters`` points sampled with
    ``seed``; one run (``nredo=1``); each point then goes to its nearest final centroid.
    """
    x = as_float32_matrix(embeddings)
    n, d = x.shape
    if not 1 <= num_clusters <= n:
        raise ValueError(f"num_clusters must be in [1, {n}], got {num_clusters}")
    km = faiss.Kmeans(d, int(num_clusters), niter=int(iters), seed=int(seed), verbose=False,
                      max_points_per_centroid=n, min_points_per_centroid=1)
    km.train(x)
    _, assign = km.index.search(x, 1)
    return assign[:, 0].astype(np.int64)


def evaluate_embeddings(embeddings, labels, recall_k: Sequence[int] = (1, 2, 4, 8),
                        query_mask=None, nmi: bool = True, kmeans_iters: int = 20, seed: int = 0,
                        chunk_size: int = 4096) -> dict:
    """All retrieval metrics of a test set from one exact search, plus NMI.

    Args:
        embeddings: [N, D] float (numpy or torch); L2-normalised here (cosine similarity).
        labels: [N] class labels (any values numpy can sort).
        recall_k: the Ks of Recall@K (default: CUB/Cars' 1 2 4 8).
        query_mask: optional bool [N]; True = query, False = gallery (In-Shop): queries search
            the gallery only. Without it every item is a query searching all the others.
        nmi: also cluster with faiss k-means (k = number of classes over all N items) and
            report NMI.
        kmeans_iters, seed: k-means iterations and seed (default 20 and 0).
        chunk_size: queries per search call; any value gives the same results.

    Returns:
        dict with ``recall@K`` for each K, ``map@r``, ``r_precision``, ``precision@1`` and
        ``nmi`` (when ``nmi``) as floats, and ``num_queries``, ``num_items``, ``num_classes``
        as ints. Lone queries (no other item of their class to find) are misses for Recall@K
        and are left out of precision@1, R-precision and MAP@R (module docstring).
    """
    x = l2_normalize(embeddings)
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
    codes = codes.astype(np.int32)
    num_classes = classes.shape[0]

    if query_mask is None:
        query_ids = None
        q_codes, db_codes = codes, codes
        num_relevant = np.bincount(codes, minlength=num_classes)[codes] - 1
        queries, database, exclude_self = x, x, True
    else:
        mask = _as_labels(query_mask, "query_mask")
        if mask.dtype != np.bool_ or mask.shape[0] != n:
            raise ValueError(f"query_mask must be bool [N] = [{n}], got {mask.dtype} {mask.shape}")
        query_ids = np.flatnonzero(mask)
        gallery_ids = np.flatnonzero(~mask)
        if query_ids.size == 0 or gallery_ids.size == 0:
            raise ValueError(f"query_mask selects {query_ids.size} queries and "
                             f"{gallery_ids.size} gallery items; both must be non-empty")
        q_codes, db_codes = codes[query_ids], codes[gallery_ids]
        num_relevant = np.bincount(db_codes, minlength=num_classes)[q_codes]
        queries, database, exclude_self = x[query_ids], x[gallery_ids], False

    num_queries = q_codes.shape[0]
    available = database.shape[0] - int(exclude_self)
    k = min(available, max(ks[-1], int(num_relevant.max())))
    first = np.empty(num_queries, np.int32)
    ap = np.empty(num_queries)
    rp = np.empty(num_queries)
    p1 = np.empty(num_queries, bool)
    for start, _, ids in iter_knn(queries, database, k, exclude_self=exclude_self, chunk_size=chunk_size):
        stop = start + ids.shape[0]
        matches = db_codes[ids] == q_codes[start:stop, None]
        first[start:stop] = first_match_rank(matches)
        p1[start:stop] = matches[:, 0]
        ap[start:stop], rp[start:stop] = average_precision_at_r(matches, num_relevant[start:stop])

    not_lone = num_relevant > 0
    out: Dict[str, float | int] = {f"recall@{kk}": float(np.mean(first < kk)) for kk in ks}
    out["map@r"] = _nanmean(ap)
    out["r_precision"] = _nanmean(rp)
    out["precision@1"] = float(p1[not_lone].mean()) if not_lone.any() else math.nan
    if nmi:
        out["nmi"] = nmi_score(codes, kmeans_assign(x, num_classes, iters=kmeans_iters, seed=seed))
    out["num_queries"] = int(num_queries)
    out["num_items"] = int(n)
    out["num_classes"] = int(num_classes)
    return out


_FRACTION_ORDER = ("map@r", "r_precision", "precision@1", "nmi")


def _is_fraction_key(key: str) -> bool:
    return key.startswith("recall@") or key in _FRACTION_ORDER


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
