"""One exact retrieval result per evaluation: every query's top-``k`` neighbours and cosines.

:func:`retrieve_split` runs the evaluation's one chunked exact search (:mod:`ibc_geo.evaluation.knn`:
ties by index, the query excluded by index; In-Shop queries against the gallery only) and keeps
its results as a :class:`RetrievalResult`. The metrics, the
TensorBoard retrieval picture, ``tools/search.py`` and the test-time refinement
(:mod:`ibc_geo.evaluation.refine`) all read that object (the metrics: :func:`ibc_geo.evaluation.metrics.retrieval_metrics`): nothing searches the same embeddings twice.

Memory: ``Q x k`` int32 indices and float32 cosines, 8 bytes an entry (SOP's test split at
k = 1000 for Recall@1000: 60,502 x 1,000 x 8 B = 484 MB); the search itself works in chunks.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np

from ibc_geo.evaluation.knn import as_float32_matrix, iter_knn

__all__ = ["RetrievalResult", "retrieve", "retrieve_split", "split_layout"]


@dataclass(frozen=True)
class RetrievalResult:
    """Ranked neighbours of each query among the database rows of one evaluated item set.

    Attributes:
        similarities: float32 ``[Q, k]``, decreasing along each row (cosines when the inputs were
            L2-normalised).
        indices: int32 / int64 ``[Q, k]``, database rows (``0 <= i < M``).
        query_items: int64 ``[Q]``, the item (row of the evaluated set) of each query.
        gallery_items: int64 ``[M]``, the item of each database row.
        exclude_self: each query is a database member and never its own neighbour (the evaluation:
            query ``q`` is database row ``q``; ``tools/search.py --query-ids``: the gallery rows).
        num_items: the size of the evaluated set (queries and gallery together).
    """

    similarities: np.ndarray
    indices: np.ndarray
    query_items: np.ndarray
    gallery_items: np.ndarray
    exclude_self: bool
    num_items: int

    @property
    def k(self) -> int:
        return int(self.indices.shape[1])

    @property
    def num_queries(self) -> int:
        return int(self.indices.shape[0])

    @property
    def num_database(self) -> int:
        return int(self.gallery_items.shape[0])

    def neighbour_items(self, k: Optional[int] = None, rows=slice(None)) -> np.ndarray:
        """Items (rows of the evaluated set) of the first ``k`` neighbours of the queries ``rows``."""
        ids = self.indices[rows, : self.k if k is None else self._check_k(k)]
        return self.gallery_items[ids]

    def top(self, k: int) -> "RetrievalResult":
        """The same result cut to its first ``k`` neighbours (views, no copy)."""
        k = self._check_k(k)
        return RetrievalResult(self.similarities[:, :k], self.indices[:, :k], self.query_items,
                               self.gallery_items, self.exclude_self, self.num_items)

    def matches(self, labels, rows=slice(None), k: Optional[int] = None) -> np.ndarray:
        """bool ``[q, k]``: neighbour ``j`` of query ``rows`` shares its label (``labels`` per item)."""
        labels = np.asarray(labels)
        return labels[self.neighbour_items(k, rows)] == labels[self.query_items[rows]][:, None]

    def _check_k(self, k: int) -> int:
        if not 1 <= int(k) <= self.k:
            raise ValueError(f"asked for {k} neighbours of a retrieval result that holds {self.k} per query")
        return int(k)


def retrieve(queries, database, k: int, exclude_self: bool = False, query_items=None, gallery_items=None,
             chunk_size: int = 4096) -> RetrievalResult:
    """Exact top-``k`` of each query among ``database`` by inner product, in query chunks.

    ``queries`` / ``database``: [Q, D] / [M, D] (compared as given: normalise them for cosines).
    ``query_items`` / ``gallery_items``: the item of each row (default ``0..Q-1`` / ``0..M-1``).
    """
    queries = as_float32_matrix(queries, "queries")
    database = as_float32_matrix(database, "database")
    q, m = queries.shape[0], database.shape[0]
    index_dtype = np.int32 if m < 2 ** 31 else np.int64
    sims = np.empty((q, k), np.float32)
    ids = np.empty((q, k), index_dtype)
    for start, s, i in iter_knn(queries, database, k, exclude_self=exclude_self, chunk_size=chunk_size):
        sims[start:start + len(s)] = s
        ids[start:start + len(s)] = i
    query_items = np.arange(q, dtype=np.int64) if query_items is None else np.asarray(query_items, np.int64)
    gallery_items = np.arange(m, dtype=np.int64) if gallery_items is None else np.asarray(gallery_items, np.int64)
    if query_items.shape != (q,) or gallery_items.shape != (m,):
        raise ValueError(f"query_items / gallery_items must be [{q}] / [{m}], got {query_items.shape} / "
                         f"{gallery_items.shape}")
    num_items = int(max(query_items.max(initial=-1), gallery_items.max(initial=-1)) + 1)
    return RetrievalResult(sims, ids, query_items, gallery_items, bool(exclude_self), num_items)


def split_layout(num_items: int, query_mask=None):
    """``(query_items, gallery_items, exclude_self)`` of an evaluated set: every item a query
    searching all the others, or (``query_mask``, In-Shop) queries searching the gallery only."""
    if query_mask is None:
        items = np.arange(num_items, dtype=np.int64)
        return items, items, True
    mask = np.asarray(query_mask)
    if mask.dtype != np.bool_ or mask.shape != (num_items,):
        raise ValueError(f"query_mask must be bool [N] = [{num_items}], got {mask.dtype} {mask.shape}")
    query_items, gallery_items = np.flatnonzero(mask), np.flatnonzero(~mask)
    if query_items.size == 0 or gallery_items.size == 0:
        raise ValueError(f"query_mask selects {query_items.size} queries and {gallery_items.size} gallery "
                         f"items; both must be non-empty")
    return query_items, gallery_items, False


def retrieve_split(embeddings, k: int, query_mask=None, chunk_size: int = 4096,
                   database_embeddings=None) -> RetrievalResult:
    """The evaluation's search over one set of items (rows of ``embeddings``, used as given).

    Every item searches all the others, or with ``query_mask`` (In-Shop) the queries search the
    gallery. ``database_embeddings`` (same shape) searches another version of the items, e.g.
    query-expanded queries against the original embeddings; item ``i`` is still never its own
    neighbour. ``k`` is capped at the items each query can retrieve.
    """
    x = as_float32_matrix(embeddings)
    db = x if database_embeddings is None else as_float32_matrix(database_embeddings, "database_embeddings")
    if db.shape != x.shape:
        raise ValueError(f"database_embeddings must have the shape of embeddings {x.shape}, got {db.shape}")
    query_items, gallery_items, exclude_self = split_layout(x.shape[0], query_mask)
    k = min(int(k), gallery_items.size - int(exclude_self))
    return retrieve(x[query_items], db[gallery_items], k, exclude_self=exclude_self, query_items=query_items,
                    gallery_items=gallery_items, chunk_size=chunk_size)
