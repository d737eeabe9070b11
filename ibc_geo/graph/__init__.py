"""Batch-graph topologies: which embeddings of a batch exchange messages.

Every topology is a small :class:`~ibc_geo.graph.base.Topology` (a PyG ``BaseTransform``)
registered in :data:`TOPOLOGIES` under its name; importing this package registers them all.

=============  ==============================================================  ============
name           edges ``j -> i``                                                 in-degree
=============  ==============================================================  ============
``full``       all pairs, self loops included (paper default)                  ``B``
``knn``        the ``k`` most similar nodes, itself included                    ``k``
``threshold``  ``relu(S_ij) > t``, plus self loops                              varies
``none``       none; ``message_passing = False`` (plain CE baseline)            ``0``
``self``       itself only                                                      ``1``
``random``     ``k`` uniformly random other nodes plus itself, fresh each call  ``k + 1``
``same_class`` every same-label node (needs ``data.y``; a training oracle)      class size
=============  ==============================================================  ============
"""
from ibc_geo.graph.registry import TOPOLOGIES
from ibc_geo.graph.similarity import SIMILARITIES, pairwise_similarity
from ibc_geo.graph.base import (
    MPN_VARIANT_KEYS,
    Topology,
    build_topology,
    build_topology_from_config,
    edges_from_mask,
    register_topology,
)
from ibc_geo.graph.full import FullTopology
from ibc_geo.graph.knn import KNNTopology
from ibc_geo.graph.threshold import ThresholdTopology
from ibc_geo.graph.none import NoTopology
from ibc_geo.graph.self_loops import SelfLoopTopology
from ibc_geo.graph.random_graph import RandomTopology
from ibc_geo.graph.same_class import SameClassTopology

__all__ = [
    "MPN_VARIANT_KEYS",
    "TOPOLOGIES",
    "SIMILARITIES",
    "pairwise_similarity",
    "Topology",
    "build_topology",
    "build_topology_from_config",
    "edges_from_mask",
    "register_topology",
    "FullTopology",
    "KNNTopology",
    "ThresholdTopology",
    "NoTopology",
    "SelfLoopTopology",
    "RandomTopology",
    "SameClassTopology",
]
