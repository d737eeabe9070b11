"""k-nearest-neighbour search of a gallery: exact by default, or through a faiss index.

* **Exact** (no index, or the factory string ``Flat``): :func:`ibc_geo.evaluation.retrieval.retrieve`,
  the evaluation's own search (inner product of L2-normalised embeddings = cosine, decreasing
  similarity, ties by increasing gallery index, complete over ties at the k-th place).
* **Approximate**: any faiss index-factory string (``IVF4096,Flat``, ``HNSW32``, ``IVF1024,PQ64``,
  ...) with the inner-product metric, trained on the gallery itself. Search-time parameters are a
  faiss ``ParameterSpace`` string (``nprobe=32``, ``efSearch=128``); unless given, IVF indexes
  probe :data:`DEFAULT_NPROBE` lists and HNSW explores :data:`DEFAULT_EF_SEARCH` candidates (faiss's
  own defaults, 1 and 16, lose much recall). The candidates the index returns are re-scored with
  the exact cosine from the gallery embeddings and ordered as exact search orders them, so the
  similarities printed are always exact; only which items are found depends on the index.

Queries that are gallery members (``exclude``: each query's own gallery index) never retrieve
themselves: ``k + 1`` are searched and the own index removed wherever it ranks, or the last one
when it is absent (a tie group or a duplicate can push it out), exactly as evaluation does.

:meth:`SearchIndex.retrieve` returns the evaluation's
:class:`~ibc_geo.evaluation.retrieval.RetrievalResult` (the gallery rows are its items ``0..N-1``;
queries that are gallery members are those items, with ``exclude_self``; other queries are items
``N, N+1, ...``); :meth:`SearchIndex.search` the plain ``(similarities, indices)`` arrays.

Test-time refinement of queries (:func:`refine_queries`, ``tools/search.py --refine``): each query
is grouped with its ``k - 1`` nearest gallery items, found exactly on the gallery's *unrefined*
embeddings (a member never groups with itself), and replaced by the group's refinement, with the
evaluation's own functions (:mod:`ibc_geo.evaluation.refine`): ``dba`` (mean), ``aqe`` (alpha
query expansion) or ``mpn`` (the MPN on the group's raw backbone features). The refined query
then searches the gallery's ``embeddings`` as usual.

A saved index is the plain faiss file plus ``<file>.json`` beside it recording the gallery it was
built on (its embeddings' SHA-256, size and dimension), so that loading it for another gallery is
an error, not silently wrong results.
"""
from __future__ import annotations

import json
import logging
import os
import re
from typing import Optional, Tuple

import faiss
import numpy as np

from ibc_geo.evaluation.retrieval import RetrievalResult, retrieve
from ibc_geo.retrieval.errors import IndexMismatchError
from ibc_geo.utils.io import atomic_write, atomic_write_json, check_output

log = logging.getLogger(__name__)

EXACT = "Flat"
DEFAULT_NPROBE = 16
DEFAULT_EF_SEARCH = 64
INDEX_FORMAT = "ibc_geo.faiss_index/1"


def drop_own(sims: np.ndarray, ids: np.ndarray, own: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """From ``[Q, k+1]`` ordered results remove each row's own index, or its last entry when the
    own index is absent: the ``k`` best other items (the evaluation's rule)."""
    drop = ids == np.asarray(own).reshape(-1, 1)
    first = np.argmax(drop, axis=1)
    missing = ~drop.any(axis=1)
    first[missing] = ids.shape[1] - 1
    keep = np.ones(ids.shape, dtype=np.bool_)
    keep[np.arange(len(ids)), first] = False
    q, k1 = ids.shape
    return sims[keep].reshape(q, k1 - 1), ids[keep].reshape(q, k1 - 1)


def default_params(factory: str) -> str:
    """The search-time parameters used unless given: ``nprobe`` for IVF, ``efSearch`` for HNSW."""
    parts = []
    if re.search(r"IVF", factory):
        parts.append(f"nprobe={DEFAULT_NPROBE}")
    if re.search(r"HNSW", factory):
        parts.append(f"efSearch={DEFAULT_EF_SEARCH}")
    return ",".join(parts)


class SearchIndex:
    """A gallery's search structure: exact, or a faiss index over the same embeddings.

    Build with :meth:`build`, or :meth:`load` a saved one for the gallery; :meth:`search` queries it.

    Args:
        database: the gallery embeddings ``[N, D]`` float32 (kept by reference: exact re-scoring).
        factory: the faiss index-factory string (``"Flat"`` = exact).
        index: the faiss index (None for exact search until :meth:`save` needs one).
        fingerprint: the SHA-256 of ``database`` (see :func:`~ibc_geo.retrieval.gallery.embeddings_sha256`).
        params: faiss ``ParameterSpace`` string applied to ``index`` ("" = :func:`default_params`).
    """

    def __init__(self, database: np.ndarray, factory: str = EXACT, index: Optional[faiss.Index] = None,
                 fingerprint: str = "", params: str = ""):
        self.database = database
        self.factory = factory
        self.index = index
        self.fingerprint = fingerprint
        if params and params.strip() and self.exact:
            raise IndexMismatchError(f"search parameters {params!r} do not apply to exact search (--index {EXACT} or "
                                     f"no --index), which has none: they would be ignored; drop --params, or give "
                                     f"an approximate --index such as HNSW32 (efSearch) or IVF1024,Flat (nprobe)")
        self.params = params or default_params(factory)
        if index is not None and self.params and not self.exact:
            try:
                faiss.ParameterSpace().set_index_parameters(index, self.params)
            except RuntimeError as e:
                raise IndexMismatchError(f"search parameters {self.params!r} do not apply to a {factory} index: "
                                         f"{_faiss_message(e)}") from None

    @property
    def exact(self) -> bool:
        return self.factory.replace(" ", "") == EXACT

    @classmethod
    def build(cls, database: np.ndarray, factory: str = EXACT, params: str = "", fingerprint: str = "",
              source: str = "the gallery", train_size: int = 0, seed: int = 0) -> "SearchIndex":
        """Train ``factory`` (inner product) on ``database`` and add it; a factory faiss cannot
        parse, or cannot train on this many vectors, is an :class:`IndexMismatchError`.

        ``train_size`` > 0 trains on that many gallery vectors drawn at random (``seed``) instead
        of faiss's own sample (up to 256 per IVF list: all of a 1,000,000 gallery for 4096 lists).
        """
        factory = factory.strip()
        n, d = database.shape
        try:
            index = faiss.index_factory(d, factory, faiss.METRIC_INNER_PRODUCT)
        except RuntimeError as e:
            raise IndexMismatchError(f"--index {factory!r} is not a faiss index-factory string for {d}-d vectors "
                                     f"({_faiss_message(e)}); e.g. Flat, IVF1024,Flat, HNSW32") from None
        lists = getattr(faiss.try_extract_index_ivf(index), "nlist", 0) if "IVF" in factory else 0
        if lists and min(n, train_size or n) < lists:
            raise IndexMismatchError(f"--index {factory!r} needs at least {lists} vectors to train its {lists} lists; "
                                     f"{source} has {min(n, train_size or n)} to train on: use fewer lists "
                                     f"(e.g. IVF{max(1, min(n // 39, int(4 * np.sqrt(n))))},Flat: faiss wants >= 39 per list) or exact search")
        train = database
        if train_size and 0 < train_size < n:
            rows = np.sort(np.random.default_rng(seed).choice(n, size=int(train_size), replace=False))
            train = database[rows]
        try:
            if not index.is_trained:
                index.train(train)
            index.add(database)
        except RuntimeError as e:
            raise IndexMismatchError(f"cannot build --index {factory!r} on {source} ({n} x {d}): "
                                     f"{_faiss_message(e)}") from None
        return cls(database, factory, index, fingerprint, params)

    def _faiss_index(self) -> faiss.Index:
        if self.index is None:
            self.index = faiss.IndexFlatIP(self.database.shape[1])
            self.index.add(self.database)
        return self.index

    def save(self, path: str, gallery: str = "", overwrite: bool = True) -> None:
        """Write the faiss index to ``path`` and its record to ``path + ".json"`` (both atomically;
        existing files are refused unless ``overwrite``)."""
        index = self._faiss_index()
        if not overwrite:
            check_output(os.fspath(path) + ".json", overwrite=False)
        atomic_write(path, lambda tmp: faiss.write_index(index, tmp), overwrite=overwrite)
        atomic_write_json(os.fspath(path) + ".json", overwrite=overwrite, data={
            "format": INDEX_FORMAT, "factory": self.factory, "params": self.params, "gallery": gallery,
            "gallery_sha256": self.fingerprint, "ntotal": int(index.ntotal), "dim": int(index.d),
            "faiss": faiss.__version__})

    @classmethod
    def load(cls, path: str, database: np.ndarray, fingerprint: str, gallery: str = "the gallery",
             params: str = "") -> "SearchIndex":
        """Read a saved index and check that it was built on ``database`` (dimension, size, and the
        fingerprint in ``path.json``); any mismatch is an :class:`IndexMismatchError` naming both files."""
        path = os.fspath(path)
        if not os.path.isfile(path):
            raise IndexMismatchError(f"index file not found: {path} (expected a faiss index written by --save-index)")
        try:
            index = faiss.read_index(path)
        except RuntimeError as e:
            raise IndexMismatchError(f"cannot read faiss index {path}: {_faiss_message(e)} "
                                     f"(expected a file written by --save-index)") from None
        n, d = database.shape
        if index.metric_type != faiss.METRIC_INNER_PRODUCT:
            raise IndexMismatchError(f"index {path} does not use the inner-product metric; expected one built by "
                                     f"tools/search.py --save-index on {gallery}")
        if index.d != d:
            raise IndexMismatchError(f"index {path} holds {index.d}-d vectors, but gallery {gallery} has {d}-d "
                                     f"embeddings; expected an index built on {gallery} (rebuild with --index ... "
                                     f"--save-index)")
        if index.ntotal != n:
            raise IndexMismatchError(f"index {path} holds {index.ntotal} vectors, but gallery {gallery} has {n}: "
                                     f"it was built on another gallery (rebuild with --index ... --save-index)")
        record = _read_record(path + ".json")
        if record is None:
            log.warning("%s.json is missing: cannot verify that index %s was built on %s (same size and "
                        "dimension); results are only right if it was", path, path, gallery)
            factory = _describe(index)
        else:
            if record.get("gallery_sha256") and fingerprint and record["gallery_sha256"] != fingerprint:
                raise IndexMismatchError(
                    f"index {path} was built on another gallery ({record.get('gallery') or 'unnamed'}, embeddings "
                    f"sha256 {record['gallery_sha256'][:12]}...), not on {gallery} ({fingerprint[:12]}...); expected "
                    f"an index built on {gallery} (rebuild with --index {record.get('factory', '...')} --save-index)")
            factory = record.get("factory") or _describe(index)
            params = params or record.get("params", "")
        return cls(database, factory, index, fingerprint, params)

    def search(self, queries: np.ndarray, k: int, exclude: Optional[np.ndarray] = None,
               chunk_size: int = 4096) -> Tuple[np.ndarray, np.ndarray]:
        """``(similarities [Q, k] float32, gallery indices [Q, k] int64)`` of the top ``k``
        (:meth:`retrieve`'s arrays).

        ``exclude``: each query's own gallery index (queries that are gallery members), never
        returned. Approximate indexes may find fewer than ``k``: the rest is index ``-1``,
        similarity NaN.
        """
        result = self.retrieve(queries, k, exclude=exclude, chunk_size=chunk_size)
        return result.similarities, result.indices

    def retrieve(self, queries: np.ndarray, k: int, exclude: Optional[np.ndarray] = None,
                 chunk_size: int = 4096) -> RetrievalResult:
        """The top ``k`` gallery rows of each query as a :class:`RetrievalResult` (module docstring).

        Exact search is :func:`ibc_geo.evaluation.retrieval.retrieve` (``k + 1`` deep with
        ``exclude``, each query's own index then removed by :func:`drop_own`, the evaluation's
        rule). ``exclude``: each query's own gallery index (queries that are gallery members),
        never returned. Approximate indexes may find fewer than ``k``: the rest is index ``-1``,
        similarity NaN (read ``indices``, not ``neighbour_items``, of such a result).
        """
        queries = np.ascontiguousarray(queries, dtype=np.float32)
        n = self.database.shape[0]
        extra = 0 if exclude is None else 1
        if not 1 <= k <= n - extra:
            raise ValueError(f"k = {k} must be in [1, {n - extra}] for a gallery of {n}"
                             + (" (the query itself excluded)" if extra else ""))
        if self.exact:
            found = retrieve(queries, self.database, k + extra, chunk_size=chunk_size)
            sims, ids = found.similarities, found.indices.astype(np.int64, copy=False)
        else:
            sims, ids = self._approximate(queries, k + extra, chunk_size)
        if exclude is not None:
            own = np.asarray(exclude, dtype=np.int64).reshape(-1)
            sims, ids = drop_own(sims, ids, own)
            query_items, num_items = own, n
        else:
            query_items, num_items = np.arange(n, n + len(queries), dtype=np.int64), n + len(queries)
        return RetrievalResult(np.ascontiguousarray(sims), np.ascontiguousarray(ids), query_items,
                               np.arange(n, dtype=np.int64), exclude is not None, num_items)

    def _approximate(self, queries: np.ndarray, k: int, chunk_size: int) -> Tuple[np.ndarray, np.ndarray]:
        sims_out = np.full((len(queries), k), np.nan, dtype=np.float32)
        ids_out = np.full((len(queries), k), -1, dtype=np.int64)
        # the re-scoring gathers [chunk, k, D] gallery rows: at most 2^24 floats (64 MiB) at once
        chunk_size = max(1, min(chunk_size, (1 << 24) // (k * self.database.shape[1])))
        for start in range(0, len(queries), chunk_size):
            q = queries[start:start + chunk_size]
            _, ids = self.index.search(q, k)
            valid = ids >= 0
            safe = np.where(valid, ids, 0)
            exact = np.einsum("qd,qkd->qk", q, self.database[safe], dtype=np.float32)
            exact = np.where(valid, exact, -np.inf).astype(np.float32)
            # decreasing exact similarity, ties by increasing index, missing entries last
            order = np.lexsort((np.where(valid, ids, np.iinfo(np.int64).max), -exact), axis=-1)
            ids = np.take_along_axis(ids, order, axis=1)
            exact = np.take_along_axis(exact, order, axis=1)
            sims_out[start:start + len(q)] = np.where(ids >= 0, exact, np.nan)
            ids_out[start:start + len(q)] = ids
        return sims_out, ids_out

    def describe(self) -> str:
        return "exact (faiss IndexFlatIP)" if self.exact else f"{self.factory}" + (f" ({self.params})" if self.params else "")


def _read_record(path: str) -> Optional[dict]:
    if not os.path.isfile(path):
        return None
    try:
        with open(path, encoding="utf-8") as f:
            record = json.load(f)
    except (OSError, ValueError) as e:
        raise IndexMismatchError(f"cannot read index record {path}: {e} (expected the JSON --save-index writes)") from None
    if not isinstance(record, dict) or record.get("format") != INDEX_FORMAT:
        raise IndexMismatchError(f"{path} is not an index record of tools/search.py (format {INDEX_FORMAT!r})")
    return record


def _describe(index: faiss.Index) -> str:
    name = type(index).__name__
    if name.startswith("IndexFlat"):
        return EXACT
    return name


def _faiss_message(e: Exception) -> str:
    """The useful line of a faiss RuntimeError (they carry the C++ file and line first)."""
    text = str(e).strip()
    match = re.search(r"(?:Error|error)[^:]*:\s*(.*)$", text.splitlines()[-1] if text else "")
    return (match.group(1) if match else text.splitlines()[-1] if text else type(e).__name__).strip()


def refine_queries(queries: np.ndarray, base: np.ndarray, refinement, exclude: Optional[np.ndarray] = None,
                   query_features: Optional[np.ndarray] = None, features: Optional[np.ndarray] = None,
                   run_mpn=None, chunk_size: int = 4096) -> Tuple[np.ndarray, np.ndarray]:
    """``(refined queries [Q, D'] L2-normalised, group neighbours [Q, k - 1] gallery rows)``.

    Each query (normalised) is grouped with its ``k - 1`` nearest rows of ``base`` (the gallery's
    unrefined embeddings, normalised here), found by the exact search (``exclude``: each query's
    own gallery row, never in its group), and replaced by the group's refinement: ``dba`` and
    ``aqe`` (``refinement.alpha``) on the normalised rows, ``mpn`` by ``run_mpn(features,
    groups)`` on ``query_features`` and the neighbours' rows of ``features`` (the raw backbone
    features). Only the ``Q x k`` group rows are gathered, never a copy of the gallery.
    """
    from ibc_geo.evaluation.knn import l2_normalize
    from ibc_geo.evaluation.refine import aqe, dba

    k = int(refinement.k)
    x = l2_normalize(queries)
    b = l2_normalize(base)
    neighbours = SearchIndex(b).retrieve(x, k - 1, exclude=exclude, chunk_size=chunk_size).indices
    q = len(x)
    groups = np.concatenate([np.arange(q, dtype=np.int64)[:, None],
                             q + np.arange(q * (k - 1), dtype=np.int64).reshape(q, k - 1)], axis=1)
    flat = neighbours.reshape(-1)
    if refinement.method == "dba":
        rows = dba(np.concatenate([x, b[flat]]), groups)
    elif refinement.method == "aqe":
        rows = aqe(np.concatenate([x, b[flat]]), groups, refinement.alpha)
    elif refinement.method == "mpn":
        if run_mpn is None or query_features is None or features is None:
            raise ValueError("mpn refinement needs run_mpn, query_features and features")
        local = np.concatenate([np.asarray(query_features, np.float32), np.asarray(features, np.float32)[flat]])
        rows = l2_normalize(run_mpn(local, groups))
    else:
        raise ValueError(f"no query refinement {refinement.method!r} (dba, aqe or mpn)")
    return rows, neighbours
