"""ibc_geo: Learning Intra-Batch Connections for Deep Metric Learning, in PyTorch Geometric."""
import warnings

# torch_geometric calls torch.jit.script at import time, which torch >= 2.10 deprecates with a
# FutureWarning on every start of every tool; it is PyG's to change, not our users' to read.
warnings.filterwarnings("ignore", message="`torch.jit.script` is deprecated", category=FutureWarning)

__version__ = "0.1.0"
