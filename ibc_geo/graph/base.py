r"""The base class of batch-graph topologies, and the public builders.

A topology turns one batch (a :class:`~torch_geometric.data.Data` holding the embeddings ``x``
and, optionally, the labels ``y``) into a graph, in the style of
:class:`torch_geometric.transforms.KNNGraph`:

* ``edge_index`` of shape ``(2, E)``, PyG's ``source_to_target`` convention: row 0 is the source
  ``j``, row 1 the target ``i`` that receives the message; edges are ordered by target, then
  source;
* ``edge_attr`` of shape ``(E,)``: :math:`\mathrm{relu}(S_{ij})`, the similarity of the two
  endpoints (see :mod:`ibc_geo.graph.similarity`);
* ``x``, ``y`` and every other attribute are kept (the input ``Data`` is shallow-copied);
* a PyG mini-batch of several graphs (``data.batch`` set, e.g. a
  :class:`~torch_geometric.data.Batch`) gets one graph per graph id, no edge between two.

Construction runs under :func:`torch.no_grad` on a dense ``B x B`` similarity, so graph building
never enters the autograd graph. Adding a topology is one new class::

    @register_topology("mine")
    class MyTopology(Topology):
        def select(self, sim, y):   # (B, B) bool mask, mask[i, j] = edge j -> i
            ...

``from_config`` is the only method that reads the config, and the class says which keys it
reads (``uses``) and checks their values (``check_config``): the config checks, the ablation
grid's "no effect" rule and TensorBoard's hparams ask the registered classes, so a topology a
user registers is checked like the built-in ones. ``build_topology(name, **kwargs)`` and
``build_topology_from_config(cfg)`` are the entry points.
"""
from __future__ import annotations

from abc import abstractmethod
from typing import Any, Callable, Dict, List, Optional, Tuple, Type, TypeVar

import torch
from torch import Tensor
from torch_geometric.data import Data
from torch_geometric.transforms import BaseTransform

from ibc_geo.graph.registry import TOPOLOGIES
from ibc_geo.graph.similarity import SIMILARITIES, pairwise_similarity

T = TypeVar("T", bound=type)

#: The MPN keys beyond the paper (``mpn.*`` in ``ibc_geo/config/schema.py``): a topology without
#: message passing has no attention for them to change, so it refuses any value but the default.
MPN_VARIANT_KEYS = ("mpn.attention_logits", "mpn.attention_scale_init", "mpn.attention_qk_init",
                    "mpn.input_scale")


def _select(cfg: Any, key: str) -> Any:
    node = cfg
    for part in key.split("."):
        node = getattr(node, part, None)
        if node is None:
            return None
    return node


def _schema_default(cfg: Any, key: str) -> Any:
    """The default of ``key`` in the dataclass behind a structured OmegaConf ``cfg``, or ``None``."""
    import dataclasses

    from omegaconf import OmegaConf

    section, name = key.rsplit(".", 1)
    node = OmegaConf.select(cfg, section) if OmegaConf.is_config(cfg) else None
    schema = OmegaConf.get_type(node) if node is not None else None
    if schema is None or not dataclasses.is_dataclass(schema):
        return None
    field = {f.name: f for f in dataclasses.fields(schema)}.get(name)
    return None if field is None else field.default


def register_topology(name: str) -> Callable[[T], T]:
    """Register a :class:`Topology` subclass in ``TOPOLOGIES`` under ``name`` and set ``cls.name``."""

    def decorator(cls: T) -> T:
        cls.name = name
        return TOPOLOGIES.register(name)(cls)

    return decorator


def edges_from_mask(mask: Tensor) -> Tensor:
    """``(B, B)`` boolean ``mask[i, j]`` (edge ``j -> i``) to an ``edge_index`` of shape ``(2, E)``.

    Row 0 holds the sources ``j``, row 1 the targets ``i``; ordered by target, then source.
    """
    target, source = mask.nonzero(as_tuple=True)
    return torch.stack([source, target], dim=0)


class Topology(BaseTransform):
    r"""Base class: builds ``edge_index`` and ``edge_attr`` of one batch graph.

    Subclasses implement :meth:`select`, which returns the boolean adjacency
    :math:`M \in \{0, 1\}^{B \times B}` with :math:`M_{ij} = 1` iff node :math:`i` receives an
    edge from node :math:`j`, given the similarity :math:`S` (and the labels when
    ``needs_labels``). The edge weight is

    .. math::
        w_{j \to i} = \max(0, S_{ij}).

    Args:
        similarity (str, optional): Edge weight and neighbour similarity, ``"correlation"``
            (Pearson, the paper's) or ``"cosine"``. (default: ``"correlation"``)

    Shapes:
        - **input:** ``data.x`` :math:`(B, F)`, ``data.y`` :math:`(B,)` (optional)
        - **output:** ``data.edge_index`` :math:`(2, E)` (int64), ``data.edge_attr`` :math:`(E,)`
    """

    name: str = ""
    #: False only for ``none``: the model then skips the message passing network.
    message_passing: bool = True
    #: True when the topology reads ``data.y`` (a training-time oracle).
    needs_labels: bool = False
    #: The config keys ``from_config`` reads: elsewhere they have no effect (an ablation grid may not
    #: vary them, TensorBoard's hparams omit them).
    uses: Tuple[str, ...] = ("graph.similarity",)

    def __init__(self, similarity: str = "correlation") -> None:
        if similarity not in SIMILARITIES:
            raise ValueError(
                f"topology {self.name!r}: unknown similarity {similarity!r}; "
                f"allowed: {', '.join(SIMILARITIES)}"
            )
        self.similarity = similarity

    @classmethod
    def from_config(cls, cfg: Any) -> "Topology":
        """Build from ``cfg.graph`` (and ``cfg.seed`` where a subclass needs it)."""
        return cls(similarity=cfg.graph.similarity)

    @classmethod
    def check_config(cls, cfg: Any) -> List[Tuple[str, Any, str]]:
        """``[(key, value, what is allowed), ...]`` for the keys of ``uses`` whose value cannot work
        with this config (empty when all is well). ``graph.k`` must be in ``[1, batch size)``; a
        topology without message passing refuses the MPN variant keys (:data:`MPN_VARIANT_KEYS`) away
        from their defaults."""
        problems = []
        if not cls.message_passing:
            for key in MPN_VARIANT_KEYS:
                default = _schema_default(cfg, key)
                value = _select(cfg, key)
                if default is not None and value is not None and value != default:
                    problems.append((key, value, f"has no effect for topology {cls.name!r}, which does no "
                                                 f"message passing; leave it at {default!r} or pick a topology "
                                                 f"with message passing"))
        if "graph.k" in cls.uses:
            batch = cfg.sampler.classes_per_batch * cfg.sampler.samples_per_class
            if not 1 <= cfg.graph.k < batch:
                problems.append(("graph.k", cfg.graph.k,
                                 f"must be in [1, batch size) = [1, {batch}) for topology {cls.name!r}"))
        return problems

    @abstractmethod
    def select(self, sim: Tensor, y: Optional[Tensor]) -> Tensor:
        """The ``(B, B)`` boolean adjacency, ``mask[i, j]`` = edge ``j -> i``."""

    def forward(self, data: Data) -> Data:
        x = data.x
        if x is None or x.dim() != 2:
            raise ValueError(
                f"topology {self.name!r} needs node features data.x of shape (B, F), got "
                f"{None if x is None else tuple(x.shape)}"
            )
        y = getattr(data, "y", None)
        if self.needs_labels and y is None:
            raise ValueError(
                f"topology {self.name!r} needs labels (data.y) to build the graph; it is a "
                "training-time oracle and cannot run without them"
            )
        batch = getattr(data, "batch", None)
        with torch.no_grad():
            if batch is None:
                data.edge_index, data.edge_attr = self._graph(x.detach(), y)
            else:
                data.edge_index, data.edge_attr = self._graphs_of_batch(x.detach(), y, batch)
        return data

    def _graph(self, x: Tensor, y: Optional[Tensor]) -> Tuple[Tensor, Tensor]:
        """``edge_index`` and ``edge_attr`` of the one graph on the nodes ``x``."""
        sim = pairwise_similarity(x, self.similarity)
        edge_index = edges_from_mask(self.select(sim, y))
        return edge_index, sim[edge_index[1], edge_index[0]].clamp_min(0)

    def _graphs_of_batch(self, x: Tensor, y: Optional[Tensor], batch: Tensor) -> Tuple[Tensor, Tensor]:
        """A PyG mini-batch of several graphs (``data.batch`` set, as in a
        :class:`~torch_geometric.data.Batch`): one graph per graph id, never an edge between two,
        as ``torch_geometric.transforms.KNNGraph`` does. Edges ordered by target, then source."""
        edge_indices, edge_attrs = [], []
        for graph_id in torch.unique(batch):
            nodes = (batch == graph_id).nonzero(as_tuple=True)[0]
            edge_index, edge_attr = self._graph(x[nodes], None if y is None else y[nodes])
            edge_indices.append(nodes[edge_index])
            edge_attrs.append(edge_attr)
        edge_index, edge_attr = torch.cat(edge_indices, dim=1), torch.cat(edge_attrs)
        order = torch.argsort(edge_index[1] * x.size(0) + edge_index[0])
        return edge_index[:, order], edge_attr[order]

    # A topology with a random generator overrides these two so that a run resumes exactly.
    def state_dict(self) -> Dict[str, Any]:
        """State to checkpoint (empty unless the topology is random)."""
        return {}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned."""
        if state:
            raise ValueError(f"topology {self.name!r} holds no state, got keys {sorted(state)}")

    def extra_repr(self) -> str:
        return f"similarity={self.similarity!r}"

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.extra_repr()})"


def build_topology(name: str, **kwargs: Any) -> Topology:
    """Instantiate the topology registered as ``name`` with keyword arguments.

    Raises ``KeyError`` listing the registered names when ``name`` is unknown.
    """
    cls: Type[Topology] = TOPOLOGIES.get(name)
    return cls(**kwargs)


def build_topology_from_config(cfg: Any) -> Topology:
    """The topology named by ``cfg.graph.topology``, built by its ``from_config``."""
    return TOPOLOGIES.get(cfg.graph.topology).from_config(cfg)
