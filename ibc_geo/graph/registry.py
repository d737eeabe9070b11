"""The registry of batch-graph topologies: ``@TOPOLOGIES.register("name")`` adds one."""
from ibc_geo.utils.registry import Registry

TOPOLOGIES = Registry("graph topology")
