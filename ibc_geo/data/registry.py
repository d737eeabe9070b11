"""The registry of datasets: ``@DATASETS.register("name")`` adds one."""
from ibc_geo.utils.registry import Registry

DATASETS = Registry("dataset")
