from ibc_geo.data.registry import DATASETS
