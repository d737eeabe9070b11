"""ibc_geo: Learning Intra-Batch Connections for Deep Metric Learning, in PyTorch Geometric."""

__version__ = "0.1.0"
