"""Test helpers shipped with the package (as PyG keeps ``torch_geometric.testing``): tiny copies of
the benchmark datasets in their exact on-disk formats (:mod:`ibc_geo.testing.fixtures`)."""
from ibc_geo.testing import fixtures

__all__ = ["fixtures"]
