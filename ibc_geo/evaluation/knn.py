"""Exact k-nearest-neighbour search by inner product (faiss ``IndexFlatIP``), in query chunks.

Cosine similarity is the inner product of L2-normalised vectors; :func:`l2_normalize` makes
them. The search is exhaustive (exact up to float32 rounding of each inner product); only
``chunk_size x k`` results and faiss's own fixed-size blocks live in memory at once, whatever
the number of queries.

Order of neighbours: decreasing similarity, ties (equal float32 similarities, e.g. exact
duplicates) by increasing database index, so results are deterministic. faiss returns the right
k similarity values but not, in general, the smallest indices among items tied at the k-th
place, nor tied items in index order. So each search asks for one neighbour more than needed;
a row whose last needed and extra neighbour are tied is searched again with a doubled k until
its whole tie group is in, and tied runs are sorted by index.

Self-exclusion (``exclude_self=True``, queries are the database, query ``i`` is item ``i``): the
search asks for ``k + 1`` neighbours and removes the entry whose index is the query's own,
wherever it ranks. A duplicate of the query can rank before it, and among ``k + 1`` items tied
with it the query itself can be missing altogether (ties keep the smallest indices); then the
``k + 1``-th neighbour is dropped instead, which is exactly the ``k`` best other items.
"""
from __future__ import annotations

from typing import Iterator, Tuple

import faiss
import numpy as np

__all__ = ["as_float32_matrix", "iter_knn", "knn_search", "l2_normalize"]

# Largest chunk_size x k result block one search call returns (float32 + int64 = 12 bytes each).
MAX_RESULT_ENTRIES = 1 << 23


def as_float32_matrix(x, name: str = "embeddings") -> np.ndarray:
    """``x`` (numpy array or torch tensor) as a C-contiguous float32 [N, D] array with finite values."""
    if hasattr(x, "detach"):  # torch tensor, without importing torch here
        x = x.detach().cpu().float().numpy()
    x = np.ascontiguousarray(np.asarray(x), dtype=np.float32)
    if x.ndim != 2:
        raise ValueError(f"{name} must be a 2-D [N, D] array, got shape {x.shape}")
    if x.shape[1] < 1:
        raise ValueError(f"{name} must have at least one dimension, got shape {x.shape}")
    bad = ~np.isfinite(x).all(axis=1)
    if bad.any():
        raise ValueError(f"{name} holds {int(bad.sum())} rows with NaN or infinite values "
                         f"(first at row {int(np.flatnonzero(bad)[0])})")
    return x


def l2_normalize(x, eps: float = 1e-12) -> np.ndarray:
    """Rows of ``x`` divided by their L2 norms (zero rows stay zero), as a new float32 array."""
    x = as_float32_matrix(x)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.maximum(norms, eps)


def _drop_self(sims: np.ndarray, ids: np.ndarray, own: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """From [c, k+1] ordered results remove each row's own index, or its last entry when absent."""
    drop = ids == own[:, None]
    missing = ~drop.any(axis=1)
    drop[missing, -1] = True
    keep = ~drop
    c, k1 = ids.shape
    return sims[keep].reshape(c, k1 - 1), ids[keep].reshape(c, k1 - 1)


def _order_ties_by_index(sims: np.ndarray, ids: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """Sort each row by (similarity descending, index ascending); only rows with ties are touched."""
    if sims.shape[1] < 2:
        return sims, ids
    rows = np.flatnonzero((sims[:, 1:] == sims[:, :-1]).any(axis=1))
    if rows.size:
        s, i = sims[rows], ids[rows]
        order = np.lexsort((i, -s), axis=-1)
        sims[rows] = np.take_along_axis(s, order, axis=1)
        ids[rows] = np.take_along_axis(i, order, axis=1)
    return sims, ids


def _exact_top(index: faiss.Index, queries: np.ndarray, k: int) -> Tuple[np.ndarray, np.ndarray]:
    """Top ``k`` of each query by (similarity desc, index asc), complete over ties at the k-th place."""
    n_db = index.ntotal
    k_s = min(n_db, k + 1)  # one more than needed shows whether a tie crosses the k-th place
    sims, ids = index.search(queries, k_s)
    if k_s > k:
        open_rows = np.flatnonzero(sims[:, k - 1] == sims[:, k])
        k_more = k_s
        while open_rows.size:
            k_more = min(n_db, 2 * k_more)
            s, i = index.search(queries[open_rows], k_more)
            closed = (s[:, -1] < sims[open_rows, k - 1]) if k_more < n_db else np.ones(len(s), bool)
            s, i = _order_ties_by_index(s[closed], i[closed])
            rows = open_rows[closed]
            sims[rows], ids[rows] = s[:, :k_s], i[:, :k_s]
            open_rows = open_rows[~closed]
    sims, ids = _order_ties_by_index(sims, ids)
    return np.ascontiguousarray(sims[:, :k]), np.ascontiguousarray(ids[:, :k])


def _check_k(k: int, num_database: int, exclude_self: bool) -> int:
    available = num_database - int(exclude_self)
    if not isinstance(k, (int, np.integer)) or isinstance(k, bool) or k < 1:
        raise ValueError(f"k must be a positive integer, got {k!r}")
    if k > available:
        raise ValueError(f"k = {k} exceeds the {available} database items each query can retrieve"
                         + (" (itself excluded)" if exclude_self else ""))
    return int(k)


def iter_knn(queries, database, k: int, exclude_self: bool = False,
             chunk_size: int = 4096) -> Iterator[Tuple[int, np.ndarray, np.ndarray]]:
    """Yield ``(start, similarities [c, k] float32, indices [c, k] int64)`` per chunk of queries.

    Args:
        queries: [Q, D] float32 (numpy or torch); compared by inner product as given.
        database: [M, D] float32; with ``exclude_self`` it must be the same items as ``queries``.
        k: neighbours per query, ``1 <= k <= M`` (``M - 1`` with ``exclude_self``).
        exclude_self: query ``i`` is database item ``i`` and never its own neighbour.
        chunk_size: queries per faiss call; lowered so that ``chunk x k <= 2^23`` results.
    """
    queries = as_float32_matrix(queries, "queries")
    database = as_float32_matrix(database, "database")
    if queries.shape[1] != database.shape[1]:
        raise ValueError(f"queries have {queries.shape[1]} dimensions, database {database.shape[1]}")
    if exclude_self and queries.shape[0] != database.shape[0]:
        raise ValueError("exclude_self needs the queries to be the database "
                         f"(got {queries.shape[0]} queries, {database.shape[0]} database items)")
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be positive, got {chunk_size}")
    k = _check_k(k, database.shape[0], exclude_self)
    k_search = k + int(exclude_self)
    chunk = max(1, min(int(chunk_size), MAX_RESULT_ENTRIES // k_search))
    index = faiss.IndexFlatIP(database.shape[1])
    index.add(database)
    for start in range(0, queries.shape[0], chunk):
        stop = min(start + chunk, queries.shape[0])
        sims, ids = _exact_top(index, queries[start:stop], k_search)
        if exclude_self:
            sims, ids = _drop_self(sims, ids, np.arange(start, stop))
        yield start, sims, ids


def knn_search(queries, database, k: int, exclude_self: bool = False,
               chunk_size: int = 4096) -> Tuple[np.ndarray, np.ndarray]:
    """Exact top-``k`` by inner product: ``(similarities [Q, k] float32, indices [Q, k] int64)``.

    See :func:`iter_knn` for the arguments, the order of ties and self-exclusion. This returns
    all ``Q x k`` results at once; metrics at scale consume :func:`iter_knn` chunk by chunk.
    """
    sims, ids = [], []
    for _, s, i in iter_knn(queries, database, k, exclude_self=exclude_self, chunk_size=chunk_size):
        sims.append(s)
        ids.append(i)
    if not sims:
        return np.zeros((0, k), np.float32), np.zeros((0, k), np.int64)
    return np.concatenate(sims), np.concatenate(ids)
