"""The embeddings file (``.npz``) that ``tools/embed.py`` writes and ``tools/search.py`` reads.

One ``numpy.savez``-compatible zip (``np.load(path)`` reads it, no pickle) holding:

============================ =================================================================
``embeddings``               float32 ``[N, D]``, each row L2-normalised (cosine = inner product)
``paths``                    str ``[N]``: the image files (or a dataset's names, e.g. ``digits[3]``)
``labels``                   int64 ``[N]``, only when the classes are known (a split, or
                             ``--labels-from-folders``): indices into ``class_names``
``class_names``              str ``[C]``, with ``labels``
``query_mask``               bool ``[N]``, only for a split that has one (In-Shop test)
``config_hash``              str: :func:`config_hash` of the run's config (runtime keys left out)
``model_hash``               str: the embedding function's identity (weights + preprocessing):
                             queries are embedded by the same model only when the hashes agree
``embeddings_sha256``        str: SHA-256 of ``embeddings``; a saved faiss index records it
``checkpoint``, ``source``,  str: the checkpoint (empty for ``--init``), ``split:<name>`` or
``config_yaml``, ``format``  ``images:<dir or list>``, the resolved config, ``ibc_geo.embeddings/1``
============================ =================================================================

A file written with ``tools/embed.py --refine dba|mpn`` (test-time refinement,
:mod:`ibc_geo.evaluation.refine`) holds the *refined* rows in ``embeddings`` and also:

============================ =================================================================
``refinement``               str: JSON of :meth:`~ibc_geo.evaluation.refine.Refinement.params`
                             (``{"method": "dba", "k": 8, "neighbours": "knn"}``); absent (or
                             empty) in a file that is not refined
``unrefined_embeddings``     float32 ``[N, D]``: the backbone embeddings, L2-normalised, that
                             the groups were found on (what an unrefined file's ``embeddings``
                             holds): a new query's group is found on them
``features``                 float32 ``[N, F]``, ``mpn`` only: the raw backbone features the MPN
                             refines (a new query's graph is it and its neighbours' features)
``mpn_hash``                 str, ``mpn`` only: 16 hex digits of SHA-256 over the MPN's weights
============================ =================================================================

:class:`EmbeddingWriter` writes it by chunks: rows go into a temporary ``.npy`` memory map beside
the output, so memory stays bounded by one chunk whatever ``N``; the members are then zipped
(``embeddings`` stored, the rest deflated) into a temporary file renamed onto the output, so an
error at any point leaves nothing behind. The extra arrays of a refined file (``arrays``) are
held in memory (a refinement needs all ``N`` items at once anyway). This module needs numpy only.
"""
from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import tempfile
import zipfile
from dataclasses import dataclass, field
from typing import Dict, Optional, Sequence

import numpy as np

from ibc_geo.retrieval.errors import GalleryError
from ibc_geo.utils.io import OutputError, atomic_write, output_error

FORMAT = "ibc_geo.embeddings/1"
META_KEYS = ("format", "config_hash", "model_hash", "embeddings_sha256", "checkpoint", "source", "config_yaml",
             "refinement", "mpn_hash")
#: The float arrays a refined file adds (see the module docstring).
REFINED_ARRAYS = ("unrefined_embeddings", "features")
#: Rows hashed per step by :func:`embeddings_sha256` (bounded memory for a memory map).
_HASH_ROWS = 65536


def config_hash(cfg) -> str:
    """16 hex digits of SHA-256 over the resolved config (canonical JSON), the runtime keys
    (where files live, devices, workers, batch sizes: ``engine.checkpoint.RUNTIME_KEYS``) left out:
    two runs of one recipe share it wherever they ran."""
    from ibc_geo.config import config_to_dict, flatten_config
    from ibc_geo.engine.checkpoint import RUNTIME_KEYS

    flat = {k: v for k, v in flatten_config(config_to_dict(cfg)).items() if k not in RUNTIME_KEYS}
    text = json.dumps(flat, sort_keys=True, default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def describe_refinement(params: dict) -> str:
    """A refinement record in words, e.g. ``dba (k 8)`` (``neighbours`` named only when not ``knn``)."""
    rest = [f"{k} {v}" for k, v in params.items() if k != "method" and not (k == "neighbours" and v == "knn")]
    return str(params["method"]) + (f" ({', '.join(rest)})" if rest else "")


def embeddings_sha256(embeddings: np.ndarray) -> str:
    """SHA-256 (hex) of a float32 ``[N, D]`` array's C-order bytes, read in row blocks."""
    h = hashlib.sha256()
    h.update(f"{embeddings.shape[0]}x{embeddings.shape[1]}:".encode())
    for start in range(0, embeddings.shape[0], _HASH_ROWS):
        block = np.ascontiguousarray(embeddings[start:start + _HASH_ROWS], dtype=np.float32)
        h.update(block.tobytes())
    return h.hexdigest()


@dataclass
class Gallery:
    """An embeddings file in memory (see the module docstring for the fields)."""

    path: str
    embeddings: np.ndarray
    paths: np.ndarray
    labels: Optional[np.ndarray] = None
    class_names: Optional[np.ndarray] = None
    query_mask: Optional[np.ndarray] = None
    meta: Dict[str, str] = field(default_factory=dict)
    unrefined: Optional[np.ndarray] = None  # a refined file's ``unrefined_embeddings``
    features: Optional[np.ndarray] = None  # an mpn-refined file's raw backbone ``features``

    def __len__(self) -> int:
        return int(self.embeddings.shape[0])

    @property
    def dim(self) -> int:
        return int(self.embeddings.shape[1])

    @property
    def refinement(self) -> Optional[dict]:
        """The parameters of the refinement that made ``embeddings`` (``{"method": "dba", "k": 8,
        ...}``), or None for a file that is not refined."""
        text = self.meta.get("refinement", "")
        return json.loads(text) if text else None

    @property
    def base_embeddings(self) -> np.ndarray:
        """The unrefined backbone embeddings: ``unrefined_embeddings`` of a refined file, else
        ``embeddings`` (what a query's refinement group is found on)."""
        return self.embeddings if self.unrefined is None else self.unrefined

    @property
    def base_dim(self) -> int:
        """The backbone's embedding size (``dim`` differs for an MPN that concatenates its layers)."""
        return int(self.base_embeddings.shape[1])

    def unit_norm(self, tolerance: float = 1e-3) -> int:
        """L2-normalise rows whose norm is not 1 (within ``tolerance``), so that inner products are
        cosines; returns how many rows changed. A zero row has no direction: :class:`GalleryError`.
        :attr:`fingerprint` stays the file's (computed before)."""
        self.fingerprint  # noqa: B018  (the file's, before any change)
        norms = np.linalg.norm(self.embeddings, axis=1)
        zero = np.flatnonzero(norms == 0)
        if zero.size:
            raise GalleryError(f"gallery {self.path}: {zero.size} embeddings are all zero (first at row {int(zero[0])}): "
                               f"they have no direction, so no cosine similarity; expected L2-normalised embeddings "
                               f"(tools/embed.py writes them)")
        off = np.abs(norms - 1) > tolerance
        if off.any():
            self.embeddings = np.ascontiguousarray(self.embeddings / norms[:, None], dtype=np.float32)
        return int(off.sum())

    @property
    def fingerprint(self) -> str:
        """``embeddings_sha256`` of the file's embeddings, recomputed by :func:`load_gallery` (and
        checked against the stored one there)."""
        if not self.meta.get("embeddings_sha256"):
            self.meta["embeddings_sha256"] = embeddings_sha256(self.embeddings)
        return self.meta["embeddings_sha256"]

    def label_name(self, label: int):
        """The class name of ``label`` (the label itself without ``class_names``)."""
        if self.class_names is not None and 0 <= label < len(self.class_names):
            return str(self.class_names[label])
        return int(label)


def load_gallery(path: str) -> Gallery:
    """Read and check an embeddings file; any problem is a :class:`GalleryError` naming ``path``."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise GalleryError(f"gallery file not found: {path} (expected an .npz written by tools/embed.py)")
    try:
        with np.load(path, allow_pickle=False) as z:
            data = {k: z[k] for k in z.files}
    except Exception as e:  # noqa: BLE001 - zip, npy or pickle problems all mean "not our file"
        raise GalleryError(f"cannot read gallery {path}: {type(e).__name__}: {e} "
                           f"(expected an .npz written by tools/embed.py)") from None
    if "embeddings" not in data:
        raise GalleryError(f"gallery {path} holds no 'embeddings' array (it has: {', '.join(sorted(data)) or 'nothing'}); "
                           f"expected an .npz written by tools/embed.py")
    emb = data["embeddings"]
    if emb.ndim != 2 or emb.shape[0] < 1 or emb.shape[1] < 1 or emb.dtype.kind != "f":
        raise GalleryError(f"gallery {path}: 'embeddings' must be a non-empty float [N, D] array, "
                           f"got {emb.dtype} {emb.shape}")
    emb = np.ascontiguousarray(emb, dtype=np.float32)
    bad = ~np.isfinite(emb).all(axis=1)
    if bad.any():
        raise GalleryError(f"gallery {path}: {int(bad.sum())} embeddings hold NaN or infinite values "
                           f"(first at row {int(np.flatnonzero(bad)[0])})")
    n = emb.shape[0]
    paths = data.get("paths")
    if paths is None:
        paths = np.array([f"#{i}" for i in range(n)])
    if paths.shape != (n,):
        raise GalleryError(f"gallery {path}: 'paths' must hold one entry per embedding ({n}), got shape {paths.shape}")
    labels = data.get("labels")
    if labels is not None:
        if labels.shape != (n,) or labels.dtype.kind not in "iu":
            raise GalleryError(f"gallery {path}: 'labels' must be integers [{n}], got {labels.dtype} {labels.shape}")
        labels = labels.astype(np.int64)
    class_names = data.get("class_names")
    if class_names is not None and labels is not None and labels.size and labels.max() >= len(class_names):
        raise GalleryError(f"gallery {path}: labels go up to {int(labels.max())} but 'class_names' "
                           f"lists {len(class_names)} classes")
    mask = data.get("query_mask")
    if mask is not None and (mask.shape != (n,) or mask.dtype != np.bool_):
        raise GalleryError(f"gallery {path}: 'query_mask' must be bool [{n}], got {mask.dtype} {mask.shape}")
    meta = {k: str(data[k]) for k in META_KEYS if k in data and data[k].ndim == 0}
    extra = _refined_arrays(path, data, meta, n)
    computed = embeddings_sha256(emb)
    stored = meta.get("embeddings_sha256")
    if stored and stored != computed:
        raise GalleryError(f"gallery {path}: its embeddings do not match the embeddings_sha256 stored with them "
                           f"(stored {stored[:12]}..., computed {computed[:12]}...): the file was changed after "
                           f"tools/embed.py wrote it, and an index saved for it would search other vectors; "
                           f"embed again (tools/embed.py), or remove 'embeddings_sha256' from the file to use it as is")
    meta["embeddings_sha256"] = computed  # the fingerprint is always recomputed, never only read
    return Gallery(path=path, embeddings=emb, paths=paths.astype(str), labels=labels,
                   class_names=None if class_names is None else class_names.astype(str), query_mask=mask, meta=meta,
                   unrefined=extra.get("unrefined_embeddings"), features=extra.get("features"))


def _refined_arrays(path: str, data: dict, meta: dict, n: int) -> dict:
    """The checked extra arrays of a refined file (``{}`` for a file that is not refined)."""
    text = meta.get("refinement", "")
    if not text:
        return {}
    try:
        record = json.loads(text)
    except ValueError:
        record = None
    if not isinstance(record, dict) or not record.get("method"):
        raise GalleryError(f"gallery {path}: 'refinement' is not the JSON record tools/embed.py --refine writes "
                           f"(got {text[:80]!r})")
    need = ["unrefined_embeddings"] + (["features"] if record["method"] == "mpn" else [])
    out = {}
    for name in need:
        array = data.get(name)
        if array is None:
            raise GalleryError(f"gallery {path} holds embeddings refined by {record['method']} but no '{name}' "
                               f"array: expected a file written by tools/embed.py --refine {record['method']}")
        if array.ndim != 2 or array.shape[0] != n or array.shape[1] < 1 or array.dtype.kind != "f":
            raise GalleryError(f"gallery {path}: '{name}' must be a float [{n}, D] array, got {array.dtype} "
                               f"{array.shape}")
        array = np.ascontiguousarray(array, dtype=np.float32)
        if not np.isfinite(array).all():
            raise GalleryError(f"gallery {path}: '{name}' holds NaN or infinite values")
        out[name] = array
    return out


class EmbeddingWriter:
    """Write an embeddings file by chunks of rows (see the module docstring).

    Use as a context manager: ``add(indices, rows)`` any number of times (each index once, any
    order), then leave the block normally to write ``path``; an exception inside the block removes
    every temporary file and writes nothing. ``chunk_size`` rows are buffered before each write
    into the memory map.

    Args:
        path: the ``.npz`` to write.
        paths: the ``N`` image paths or names, in index order.
        dim: the embedding size ``D``.
        labels, class_names, query_mask: optional arrays of the module docstring.
        meta: the string fields (``config_hash``, ``model_hash``, ``checkpoint``, ``source``, ``config_yaml``;
            ``refinement`` and ``mpn_hash`` for a refined file).
        arrays: more ``[N, ...]`` arrays written as members of their names (a refined file's
            ``unrefined_embeddings`` and ``features``), held in memory.
        chunk_size: rows buffered in memory between writes (default: ``16384``).
        overwrite: replace an existing ``path`` (default: ``True``; the tools pass ``--overwrite``).

    The memory-mapped files are allocated on disk when created, so a full disk is an
    :class:`~ibc_geo.utils.io.OutputError` naming ``path``, never a SIGBUS in the middle.
    """

    def __init__(self, path: str, paths: Sequence[str], dim: int, labels: Optional[np.ndarray] = None,
                 class_names: Optional[Sequence[str]] = None, query_mask: Optional[np.ndarray] = None,
                 meta: Optional[Dict[str, str]] = None, chunk_size: int = 16384, overwrite: bool = True,
                 arrays: Optional[Dict[str, np.ndarray]] = None):
        if chunk_size < 1:
            raise ValueError(f"chunk_size must be positive, got {chunk_size}")
        for name, array in (arrays or {}).items():
            if name not in REFINED_ARRAYS or len(array) != len(paths):
                raise ValueError(f"extra array {name!r} must be one of {REFINED_ARRAYS} with {len(paths)} rows")
        self.path = os.fspath(path)
        self.paths = paths
        self.num_items = len(paths)
        self.dim = int(dim)
        self.labels = labels
        self.class_names = class_names
        self.query_mask = query_mask
        self.meta = dict(meta or {})
        self.chunk_size = int(chunk_size)
        self.overwrite = bool(overwrite)
        self.arrays = dict(arrays or {})
        self._tmpdir: Optional[str] = None
        self._created: Optional[str] = None
        self._rows = None
        self._seen = np.zeros(self.num_items, dtype=np.bool_)
        self._buffer_idx: list = []
        self._buffer_rows: list = []
        self._buffered = 0
        self.chunks_written = 0

    def __enter__(self) -> "EmbeddingWriter":
        folder = os.path.dirname(os.path.abspath(self.path))
        if not self.overwrite and os.path.lexists(self.path):
            raise OutputError(f"refusing to replace {self.path}: it exists (pass --overwrite to replace it)")
        self._created = None if os.path.isdir(folder) else folder
        try:
            os.makedirs(folder, exist_ok=True)
            self._tmpdir = tempfile.mkdtemp(prefix="." + os.path.basename(self.path) + ".", suffix=".tmp", dir=folder)
            self._rows = _allocated_memmap(os.path.join(self._tmpdir, "embeddings.npy"), np.float32,
                                           (self.num_items, self.dim))
        except OSError as e:  # e.g. a full disk: no temporary folder stays behind
            self.__exit__(type(e), e, None)
            raise output_error(self.path, e) from None
        return self

    def add(self, indices: np.ndarray, rows: np.ndarray) -> None:
        indices = np.asarray(indices, dtype=np.int64).reshape(-1)
        rows = np.asarray(rows, dtype=np.float32)
        if rows.shape != (len(indices), self.dim):
            raise ValueError(f"expected rows of shape ({len(indices)}, {self.dim}), got {rows.shape}")
        self._buffer_idx.append(indices)
        self._buffer_rows.append(rows)
        self._buffered += len(indices)
        if self._buffered >= self.chunk_size:
            self._flush()

    def _flush(self) -> None:
        if not self._buffered:
            return
        idx = np.concatenate(self._buffer_idx)
        rows = np.concatenate(self._buffer_rows)
        if idx.min() < 0 or idx.max() >= self.num_items:
            raise ValueError(f"row index out of range [0, {self.num_items}): {int(idx.min())}..{int(idx.max())}")
        if self._seen[idx].any() or len(np.unique(idx)) != len(idx):
            raise ValueError("some row was written twice; every index must come once")
        self._seen[idx] = True
        self._rows[idx] = rows
        self._rows.flush()
        self._buffer_idx, self._buffer_rows, self._buffered = [], [], 0
        self.chunks_written += 1

    def __exit__(self, exc_type, exc, tb) -> None:
        try:
            if exc_type is None:
                self._flush()
                if not self._seen.all():
                    missing = np.flatnonzero(~self._seen)
                    raise ValueError(f"{len(missing)} of {self.num_items} rows were never written "
                                     f"(first: {int(missing[0])})")
                try:
                    self._finish()
                except OSError as e:  # a full disk while writing the members
                    raise output_error(self.path, e) from None
        finally:
            self._rows = None
            if self._tmpdir and os.path.isdir(self._tmpdir):
                shutil.rmtree(self._tmpdir, ignore_errors=True)
            if self._created and not os.path.exists(self.path):
                try:  # a folder made for an output that was never written goes too (if still empty)
                    os.removedirs(self._created)
                except OSError:
                    pass

    def _save_member(self, name: str, array: np.ndarray) -> str:
        file = os.path.join(self._tmpdir, name + ".npy")
        np.save(file, array, allow_pickle=False)
        return file

    def _paths_member(self) -> str:
        """The paths as a fixed-width unicode .npy, filled by chunks (no second full copy in memory)."""
        width = max(1, max((len(p) for p in self.paths), default=1))
        file = os.path.join(self._tmpdir, "paths.npy")
        out = _allocated_memmap(file, f"<U{width}", (self.num_items,))
        for start in range(0, self.num_items, self.chunk_size):
            out[start:start + self.chunk_size] = self.paths[start:start + self.chunk_size]
        out.flush()
        del out
        return file

    def _finish(self) -> None:
        emb_file = os.path.join(self._tmpdir, "embeddings.npy")
        self.meta["embeddings_sha256"] = embeddings_sha256(self._rows)
        self.meta.setdefault("format", FORMAT)
        self._rows.flush()
        self._rows = None  # close the memory map before zipping its file
        members = [("embeddings", emb_file, zipfile.ZIP_STORED), ("paths", self._paths_member(), zipfile.ZIP_DEFLATED)]
        if self.labels is not None:
            members.append(("labels", self._save_member("labels", np.asarray(self.labels, dtype=np.int64)),
                            zipfile.ZIP_DEFLATED))
        if self.class_names is not None:
            names = np.asarray([str(c) for c in self.class_names])
            members.append(("class_names", self._save_member("class_names", names), zipfile.ZIP_DEFLATED))
        if self.query_mask is not None:
            members.append(("query_mask", self._save_member("query_mask", np.asarray(self.query_mask, dtype=np.bool_)),
                            zipfile.ZIP_DEFLATED))
        for name, array in self.arrays.items():
            members.append((name, self._save_member(name, np.ascontiguousarray(array, dtype=np.float32)),
                            zipfile.ZIP_STORED))
        for key in META_KEYS:
            if key in self.meta:
                members.append((key, self._save_member(key, np.array(str(self.meta[key]))), zipfile.ZIP_DEFLATED))
        def write_zip(tmp_zip: str) -> None:
            with zipfile.ZipFile(tmp_zip, "w", allowZip64=True) as zf:
                for name, file, compression in members:
                    zf.write(file, arcname=name + ".npy", compress_type=compression)

        atomic_write(self.path, write_zip, overwrite=self.overwrite)


def _allocated_memmap(file: str, dtype, shape) -> np.ndarray:
    """``numpy.lib.format.open_memmap`` whose blocks are reserved on disk at once (a sparse memory
    map on a full disk kills the process with SIGBUS at the first write into it)."""
    rows = np.lib.format.open_memmap(file, mode="w+", dtype=dtype, shape=shape)
    size = os.path.getsize(file)
    if size and hasattr(os, "posix_fallocate"):
        fd = os.open(file, os.O_RDWR)
        try:
            os.posix_fallocate(fd, 0, size)
        except OSError as e:
            if e.errno not in (errno.EOPNOTSUPP, errno.ENOTSUP, errno.EINVAL):
                raise
        finally:
            os.close(fd)
    return rows


def write_embeddings(path: str, embeddings: np.ndarray, paths: Sequence[str], chunk_size: int = 16384,
                     **kwargs) -> None:
    """Write an in-memory ``[N, D]`` array as an embeddings file (``kwargs``: :class:`EmbeddingWriter`'s)."""
    embeddings = np.asarray(embeddings, dtype=np.float32)
    with EmbeddingWriter(path, paths, embeddings.shape[1], chunk_size=chunk_size, **kwargs) as writer:
        for start in range(0, len(embeddings), chunk_size):
            stop = min(start + chunk_size, len(embeddings))
            writer.add(np.arange(start, stop), embeddings[start:stop])

