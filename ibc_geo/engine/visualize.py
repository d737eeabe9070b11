"""What the TensorBoard pictures show: a batch's dense attention and cosine similarity, the node
order that groups classes (:mod:`ibc_geo.engine.figures`), and the retrieval picture's queries,
neighbours and captions read from an evaluation's retrieval result."""
from __future__ import annotations

from typing import Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F


def class_order(labels: torch.Tensor) -> torch.Tensor:
    """Node order that groups classes (stable, so the order within a class is kept)."""
    return torch.sort(labels.cpu(), stable=True).indices


def dense_attention(edge_index: torch.Tensor, alpha: torch.Tensor, num_nodes: int) -> torch.Tensor:
    """``A[i, j]`` = attention of target i on source j, averaged over heads; 0 where no edge."""
    dense = torch.zeros(num_nodes, num_nodes, dtype=torch.float32)
    weights = alpha.detach().float().cpu()
    weights = weights.mean(dim=-1) if weights.dim() > 1 else weights
    src, dst = edge_index.cpu()
    dense.index_put_((dst, src), weights, accumulate=True)
    return dense


def cosine_matrix(x: torch.Tensor) -> torch.Tensor:
    x = F.normalize(x.detach().float().cpu(), dim=-1)
    return x @ x.t()


def picture_queries(evaluation, count: int = 8, seed: int = 0) -> np.ndarray:
    """Dataset indices of ``count`` queries for the retrieval picture, drawn once (seeded) from the
    whole split: queries with at least one other item of their class, one per class while classes
    last."""
    result, labels = evaluation.retrieval, evaluation.labels
    q_labels = labels[result.query_items]
    counts = np.bincount(labels[result.gallery_items], minlength=int(labels.max()) + 1)[q_labels]
    findable = np.flatnonzero(counts - int(result.exclude_self) > 0)
    rng = np.random.default_rng([seed, 3])
    order = rng.permutation(findable)
    _, first = np.unique(q_labels[order], return_index=True)   # one query per class ...
    picked = order[np.sort(first)][:count]
    if len(picked) < count:                                     # ... then any other
        picked = np.concatenate([picked, np.setdiff1d(order, picked, assume_unique=True)[: count - len(picked)]])
    return evaluation.items[result.query_items[picked]]


def retrieval_picture(evaluation, query_ids: Sequence[int], k: int = 8,
                      class_names: Optional[Sequence] = None):
    """``(query dataset indices, neighbour dataset indices [Q, k], correct [Q, k], captions)`` of the
    given queries (dataset indices) from ``evaluation.retrieval``: exactly the neighbours and
    matches the metrics counted. A query no longer evaluated (a dropped image) is left out;
    ``None`` when none is left. Captions: ``query`` / ``#rank cosine``, then the class."""
    result, items = evaluation.retrieval, evaluation.items
    row_of_item = np.full(int(items.max()) + 1 if len(items) else 0, -1, np.int64)
    row_of_item[items] = np.arange(len(items))
    query_row = np.full(result.num_items, -1, np.int64)
    query_row[result.query_items] = np.arange(result.num_queries)
    ids = np.asarray(query_ids, np.int64)
    ids = ids[ids < len(row_of_item)]
    rows = query_row[row_of_item[ids][row_of_item[ids] >= 0]]
    rows = rows[rows >= 0]
    k = min(k, result.k)
    if len(rows) == 0 or k < 1:
        return None
    neighbours = result.neighbour_items(k, rows)
    correct = result.matches(evaluation.labels, rows, k)
    sims = result.similarities[rows, :k]
    name = (lambda label: str(class_names[label])[:10]) if class_names is not None else str  # noqa: E731
    captions = []
    for r, q in enumerate(result.query_items[rows]):
        row = [f"query\n{name(evaluation.labels[q])}"]
        row += [f"#{j + 1} {sims[r, j]:.3f}\n{name(evaluation.labels[n])}" for j, n in enumerate(neighbours[r])]
        captions.append(row)
    return items[result.query_items[rows]], items[neighbours], correct, captions
