r"""Test-time refinement of embeddings from their neighbours: DBA, alpha-QE and the official MPN mode.

Every refinement replaces an item's embedding :math:`x_i` (L2-normalised) by a function of a
*group* :math:`G_i = (i, j_1, \dots, j_{k-1})`: the item itself first, then ``k - 1`` neighbours
among the database (the searched items; In-Shop: the gallery). The groups come from the
evaluation's one :class:`~ibc_geo.evaluation.retrieval.RetrievalResult`:

* ``knn``: the ``k - 1`` nearest neighbours (ties by index, the item excluded).
* ``reciprocal``: the official test mode's rule (``combine_sampler.py`` ``KReciprocalSampler``) with
  forward lists :math:`F_i = (i, \text{its } k_1 \text{ nearest})`: the reciprocal set
  :math:`R_i = \{ j \in F_i : i \in F_j \}`; every candidate :math:`c \in R_i` whose own reciprocal
  set :math:`R'_c` (lists cut to :math:`k_2`, officially :math:`\mathrm{round}(k_1/2)`) shares more
  than 2/3 of its members with :math:`R_i` adds :math:`R'_c`; the union, ordered by decreasing
  cosine to :math:`i` (ties by index), is cut to ``k`` and filled up with plain nearest neighbours.
  The item itself always comes first (the official code puts whatever is nearest first, which is
  the item unless an exact duplicate ties with it).

The refinements (``eval.refine``), none of which ever reads a label:

* ``dba`` (database-side augmentation): :math:`x'_i = \mathrm{normalize}(\frac{1}{k}\sum_{j \in G_i} x_j)`.
* ``aqe`` (alpha query expansion, Radenovic et al. 2018): :math:`x'_i = \mathrm{normalize}(\sum_{j \in
  G_i} \max(0, x_i^\top x_j)^{\alpha} x_j)` (the item's own weight is 1); the expanded queries then
  search the *original* database.
* ``mpn`` (the official ``pseudo_test`` mode): :math:`G_i` becomes one fully connected graph (self
  loops included, as the ``full`` topology) of the backbone features, the trained MPN runs on it in
  eval mode, and node :math:`i`'s output :math:`u_i` (the MPN embedding, all layers concatenated with
  ``mpn.concat_layers``) replaces it; many small graphs go through one forward pass at a time.

``dba`` and ``mpn`` refine every item (queries and gallery); the refined queries search the refined
database. ``aqe`` refines the queries only. Memory: the groups (``N x k`` int64) and one batch of
graphs at a time; the neighbour lists are those the evaluation keeps anyway.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional, Tuple

import numpy as np

from ibc_geo.evaluation.knn import l2_normalize
from ibc_geo.evaluation.retrieval import RetrievalResult, retrieve
from ibc_geo.utils.errors import UserError

__all__ = ["METHODS", "NEIGHBOURS", "Refinement", "RefinementError", "aqe", "dba", "knn_groups",
           "mpn_refine", "reciprocal_groups", "refine_embeddings", "refinement_groups"]

METHODS = ("none", "dba", "aqe", "mpn")
NEIGHBOURS = ("knn", "reciprocal")
_CHUNK = 1024  # items per vectorised step of the group construction


class RefinementError(UserError, ValueError):
    """A refinement that cannot run on these inputs (its message names the key and the size)."""


@dataclass(frozen=True)
class Refinement:
    """What ``eval.refine*`` ask for (see the module docstring).

    Attributes:
        method: ``none`` | ``dba`` | ``aqe`` | ``mpn`` (``eval.refine``).
        k: group size, the item itself included (``eval.refine_k``, >= 2, below the database size).
        alpha: the weight exponent of ``aqe`` (``eval.refine_alpha``).
        neighbours: ``knn`` | ``reciprocal`` (``eval.refine_neighbours``).
        k1, k2: the forward-list lengths of the reciprocal rule (``eval.refine_k1``, ``eval.refine_k2``).
        batch_nodes: graph nodes per MPN forward pass (``eval.refine_batch_nodes``).
    """

    method: str = "none"
    k: int = 8
    alpha: float = 3.0
    neighbours: str = "knn"
    k1: int = 30
    k2: int = 15
    batch_nodes: int = 8192

    #: The config key of each field.
    KEYS = {"method": "eval.refine", "k": "eval.refine_k", "alpha": "eval.refine_alpha",
            "neighbours": "eval.refine_neighbours", "k1": "eval.refine_k1", "k2": "eval.refine_k2",
            "batch_nodes": "eval.refine_batch_nodes"}

    def __post_init__(self):
        if self.method not in METHODS:
            raise RefinementError(f"eval.refine must be one of {', '.join(METHODS)}, got {self.method!r}")
        if self.neighbours not in NEIGHBOURS:
            raise RefinementError(f"eval.refine_neighbours must be one of {', '.join(NEIGHBOURS)}, "
                                  f"got {self.neighbours!r}")
        for name in ("k", "k1", "k2", "batch_nodes"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
                raise RefinementError(f"{self.KEYS[name]} must be an integer, got {value!r}")
        if self.k < 2:
            raise RefinementError(f"eval.refine_k = {self.k}: a group needs the item and at least one "
                                  f"neighbour (>= 2)")
        if not 1 <= self.k2 <= self.k1:
            raise RefinementError(f"eval.refine_k1 = {self.k1} and eval.refine_k2 = {self.k2} must satisfy "
                                  f"1 <= k2 <= k1 (official: k1 30, k2 round(k1 / 2) = 15)")
        if self.batch_nodes < 1:
            raise RefinementError(f"eval.refine_batch_nodes must be >= 1, got {self.batch_nodes}")
        if not (np.isfinite(self.alpha) and self.alpha >= 0):
            raise RefinementError(f"eval.refine_alpha must be a finite number >= 0, got {self.alpha!r}")

    @classmethod
    def from_config(cls, cfg) -> "Refinement":
        e = cfg.eval
        return cls(method=str(e.refine), k=e.refine_k, alpha=float(e.refine_alpha),
                   neighbours=str(e.refine_neighbours), k1=e.refine_k1, k2=e.refine_k2,
                   batch_nodes=e.refine_batch_nodes)

    @property
    def enabled(self) -> bool:
        return self.method != "none"

    @property
    def refines_database(self) -> bool:
        """``dba`` and ``mpn`` refine the database too; ``aqe`` the queries only."""
        return self.method in ("dba", "mpn")

    @property
    def search_k(self) -> int:
        """Neighbours per item the groups need from the retrieval result."""
        return max(self.k - 1, self.k1 if self.neighbours == "reciprocal" else 0)

    def params(self) -> dict:
        """The parameters this refinement reads (recorded beside its metrics)."""
        out = {"method": self.method}
        if not self.enabled:
            return out
        out.update(k=self.k, neighbours=self.neighbours)
        if self.method == "aqe":
            out["alpha"] = self.alpha
        if self.neighbours == "reciprocal":
            out.update(k1=self.k1, k2=self.k2)
        return out

    def describe(self) -> str:
        return " ".join(f"{k} {v}" for k, v in self.params().items())

    def check(self, num_database: int, exclude_self: bool, query_mask=None) -> None:
        """Refuse a group larger than the database (the key and the size named)."""
        if not self.enabled:
            return
        if self.neighbours == "reciprocal" and query_mask is not None:
            raise RefinementError("eval.refine_neighbours reciprocal needs every item to be a query of the "
                                  "same set (its neighbours' own lists); this split has separate queries and "
                                  "gallery (In-Shop): use eval.refine_neighbours knn")
        available = num_database - int(exclude_self)
        if self.k >= num_database:
            raise RefinementError(f"eval.refine_k = {self.k} must be below the gallery size {num_database} "
                                  f"(each group: the item and k - 1 of its {available} neighbours)")
        if self.neighbours == "reciprocal" and self.k1 > available:
            raise RefinementError(f"eval.refine_k1 = {self.k1} exceeds the {available} database items each "
                                  f"item can list")


def knn_groups(items: np.ndarray, neighbour_items: np.ndarray, k: int) -> np.ndarray:
    """``[R, k]`` groups: each item, then its first ``k - 1`` neighbours."""
    return np.concatenate([np.asarray(items, np.int64)[:, None], neighbour_items[:, : k - 1]], axis=1)


def _reciprocal_mask(forward: np.ndarray) -> np.ndarray:
    """``mask[i, a]``: item ``i`` is in the forward list of its ``a``-th forward entry."""
    out = np.empty(forward.shape, bool)
    for s in range(0, len(forward), _CHUNK):
        f = forward[s:s + _CHUNK]
        own = np.arange(s, s + len(f))[:, None, None]
        out[s:s + len(f)] = (forward[f] == own).any(axis=2)
    return out


def reciprocal_groups(x: np.ndarray, neighbours: np.ndarray, size: int, k1: int = 30,
                      k2: int = 15) -> np.ndarray:
    """``[N, size]`` groups by the official k-reciprocal rule (module docstring), item first.

    Args:
        x: ``[N, D]`` L2-normalised embeddings (the order of the union is by cosine to the item).
        neighbours: ``[N, K]`` each item's ranked neighbours among the same N items, itself
            excluded; ``K >= max(k1, size - 1)``.
    """
    n, kk = neighbours.shape
    if kk < max(k1, size - 1):
        raise ValueError(f"reciprocal groups need {max(k1, size - 1)} neighbours per item, got {kk}")
    own = np.arange(n, dtype=np.int64)[:, None]
    forward = np.concatenate([own, neighbours[:, :k1]], axis=1).astype(np.int64)     # F_i, [N, k1 + 1]
    near = np.concatenate([own, neighbours], axis=1).astype(np.int64)                 # fill order
    is_rec = _reciprocal_mask(forward)                                                # i in F_{F_i[a]}
    forward2 = forward[:, : k2 + 1]
    is_rec2 = _reciprocal_mask(forward2)                                              # R'_c members
    groups = np.empty((n, size), np.int64)
    for s in range(0, n, _CHUNK):
        rows = np.arange(s, min(s + _CHUNK, n))
        f, m1 = forward[rows], is_rec[rows]
        rec = np.where(m1, f, -1)                                                     # R_i, -1 padded
        cand2 = forward2[f]                                                           # [c, k1+1, k2+1]
        m2 = is_rec2[f]                                                               # members of R'_c
        in_rec = (cand2[..., None] == rec[:, None, None, :]).any(axis=3) & m2
        shared, members = in_rec.sum(axis=2), m2.sum(axis=2)
        accept = m1 & (shared > 2.0 / 3.0 * members)                                  # [c, k1+1]
        added = np.where(accept[..., None] & m2, cand2, -1).reshape(len(rows), -1)
        union = np.concatenate([rec, added], axis=1)
        # unique per row: sort by id, blank repeats and padding (as n), sort again, keep the filled width
        union[union < 0] = n
        union.sort(axis=1)
        union[:, 1:][union[:, 1:] == union[:, :-1]] = n
        union.sort(axis=1)
        union = union[:, : max(1, int((union < n).sum(axis=1).max()))]
        valid = union < n
        union[~valid] = -1
        cos = np.einsum("cd,cud->cu", x[rows], x[np.where(valid, union, 0)])
        cos = np.where(valid, cos, -np.inf)
        cos[union == rows[:, None]] = np.inf                                          # the item first
        order = np.lexsort((np.where(valid, union, np.iinfo(np.int64).max), -cos), axis=-1)[:, :size]
        chosen = np.take_along_axis(union, order, axis=1)
        count = np.take_along_axis(valid, order, axis=1).sum(axis=1)                  # <= size
        if chosen.shape[1] < size:
            chosen = np.concatenate([chosen, np.full((len(rows), size - chosen.shape[1]), -1)], axis=1)
        # fill with plain nearest neighbours not chosen yet, in rank order
        nr = near[rows]
        taken = (nr[..., None] == chosen[:, None, :]).any(axis=2)
        fillers = np.take_along_axis(nr, np.argsort(taken, axis=1, kind="stable"), axis=1)
        slot = np.arange(size)[None, :]
        pick = np.clip(slot - count[:, None], 0, nr.shape[1] - 1)
        groups[rows] = np.where(slot < count[:, None], chosen, np.take_along_axis(fillers, pick, axis=1))
    return groups


def refinement_groups(x: np.ndarray, retrieval: RetrievalResult, refinement: Refinement,
                      query_mask=None, chunk_size: int = 4096) -> Tuple[np.ndarray, np.ndarray]:
    """``(items [R], groups [R, k])``: the items to refine and their groups of item indices.

    Every item searches the others (no ``query_mask``): the groups come from ``retrieval`` alone.
    With separate queries and gallery, ``aqe`` groups the queries with their gallery neighbours
    (from ``retrieval``); ``dba`` and ``mpn`` also refine the gallery, whose groups come from one
    search of the gallery against itself (the evaluation never runs that one).
    """
    k = refinement.k
    if retrieval.k < refinement.search_k:
        raise ValueError(f"the retrieval result holds {retrieval.k} neighbours; {refinement.describe()} needs "
                         f"{refinement.search_k}")
    if query_mask is None:
        items = retrieval.query_items
        if refinement.neighbours == "reciprocal":
            return items, reciprocal_groups(x, retrieval.neighbour_items(), k, refinement.k1, refinement.k2)
        return items, knn_groups(items, retrieval.neighbour_items(k - 1), k)
    items, groups = retrieval.query_items, knn_groups(retrieval.query_items, retrieval.neighbour_items(k - 1), k)
    if refinement.refines_database:
        gallery = retrieval.gallery_items
        own = retrieve(x[gallery], x[gallery], k - 1, exclude_self=True, chunk_size=chunk_size)
        items = np.concatenate([items, gallery])
        groups = np.concatenate([groups, knn_groups(gallery, gallery[own.indices], k)])
    return items, groups


def dba(x: np.ndarray, groups: np.ndarray) -> np.ndarray:
    """Normalised mean of each group's embeddings, ``[R, D]``."""
    out = np.empty((len(groups), x.shape[1]), np.float32)
    for s in range(0, len(groups), _CHUNK):
        out[s:s + _CHUNK] = x[groups[s:s + _CHUNK]].sum(axis=1)
    return l2_normalize(out)


def aqe(x: np.ndarray, groups: np.ndarray, alpha: float) -> np.ndarray:
    """Each group's embeddings weighted by ``max(0, cos to the item) ** alpha``, summed, normalised."""
    out = np.empty((len(groups), x.shape[1]), np.float32)
    for s in range(0, len(groups), _CHUNK):
        g = x[groups[s:s + _CHUNK]]                                                   # [c, k, D]
        w = np.maximum(np.einsum("cd,ckd->ck", g[:, 0], g), 0.0) ** alpha
        w[:, 0] = 1.0
        out[s:s + _CHUNK] = np.einsum("ck,ckd->cd", w, g)
    return l2_normalize(out)


def mpn_refine(mpn, features: np.ndarray, groups: np.ndarray, device="cpu", batch_nodes: int = 8192) -> np.ndarray:
    """The official test mode: node 0's MPN output of each group's fully connected graph, ``[R, D']``.

    ``features``: the backbone features the MPN was trained on (not normalised: the MPN's own
    ``input_norm`` does that). ``batch_nodes`` nodes (many small graphs) go through one forward pass.
    The MPN runs in eval mode without gradients; its mode is restored.
    """
    import torch

    from ibc_geo.graph.base import edges_from_mask

    r, b = groups.shape
    base = edges_from_mask(torch.ones(b, b, dtype=torch.bool))                        # [2, b^2]
    per = max(1, int(batch_nodes) // b)
    was_training = mpn.training
    mpn.eval()
    outs = []
    try:
        with torch.no_grad():
            for s in range(0, r, per):
                g = groups[s:s + per]
                nodes = torch.from_numpy(np.ascontiguousarray(features[g.reshape(-1)], np.float32)).to(device)
                offset = torch.arange(len(g)).repeat_interleave(b * b) * b
                edge_index = (base.repeat(1, len(g)) + offset).to(device)
                u, _ = mpn(nodes, edge_index)
                outs.append(u[::b].float().cpu().numpy())
    finally:
        mpn.train(was_training)
    return np.concatenate(outs) if outs else np.zeros((0, 0), np.float32)


def refine_embeddings(embeddings: np.ndarray, retrieval: RetrievalResult, refinement: Refinement,
                      query_mask=None, features: Optional[np.ndarray] = None,
                      run_mpn: Optional[Callable[[np.ndarray, np.ndarray], np.ndarray]] = None,
                      chunk_size: int = 4096) -> np.ndarray:
    """The refined embeddings of all N items, ``[N, D']`` L2-normalised (rows not refined unchanged).

    Args:
        embeddings: ``[N, D]`` the evaluated embeddings (normalised here).
        retrieval: their evaluation's retrieval result, at least ``refinement.search_k`` deep.
        features: the backbone features for ``mpn`` (default: ``embeddings``).
        run_mpn: ``(features, groups) -> [R, D']`` for ``mpn`` (e.g. :func:`mpn_refine` bound to a
            model and a device, or a sharded version under torchrun).
    """
    x = l2_normalize(embeddings)
    refinement.check(retrieval.num_database, retrieval.exclude_self, query_mask)
    if not refinement.enabled:
        return x
    items, groups = refinement_groups(x, retrieval, refinement, query_mask, chunk_size)
    if refinement.method == "dba":
        rows = dba(x, groups)
    elif refinement.method == "aqe":
        rows = aqe(x, groups, refinement.alpha)
    else:
        if run_mpn is None:
            raise RefinementError("eval.refine mpn needs a trained MPN (a checkpoint whose graph.topology has one)")
        rows = l2_normalize(run_mpn(x if features is None else features, groups))
    if rows.shape[1] != x.shape[1]:  # the MPN's own space (e.g. concatenated layers): all items refined
        if len(items) != len(x):
            raise ValueError("a refinement that changes the dimension must refine every item")
        out = np.empty((len(x), rows.shape[1]), np.float32)
    else:
        out = x.copy()
    out[items] = rows
    return out



def evaluate_refined(embeddings: np.ndarray, labels, retrieval: RetrievalResult, refinement: Refinement,
                     query_mask=None, run_mpn=None, **metric_options) -> dict:
    """``{"refinement": params, "metrics": ..., "seconds": ...}``: the metrics of the refined embeddings.

    The refined queries search the refined database (``dba``, ``mpn``) or the original one (``aqe``)
    with :func:`~ibc_geo.evaluation.metrics.evaluate_embeddings` and ``metric_options``;
    ``seconds`` is the refinement's own time (groups and new embeddings), not the new search's.
    """
    import time

    from ibc_geo.evaluation.metrics import evaluate_embeddings

    start = time.perf_counter()
    refined = refine_embeddings(embeddings, retrieval, refinement, query_mask, run_mpn=run_mpn,
                                chunk_size=metric_options.get("chunk_size", 4096))
    seconds = time.perf_counter() - start
    database = None if refinement.refines_database else l2_normalize(embeddings)
    metrics = evaluate_embeddings(refined, labels, query_mask=query_mask, database_embeddings=database,
                                  **metric_options)
    return {"refinement": refinement.params(), "metrics": metrics, "seconds": seconds}
