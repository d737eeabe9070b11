from ibc_geo.graph.registry import TOPOLOGIES
