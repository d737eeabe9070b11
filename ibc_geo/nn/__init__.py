"""Neural network layers on batch graphs, PyG-style (usable in any PyG model, no config reads).

* :class:`IntraBatchAttention`: multi-head attention over incoming edges, a ``MessagePassing``
  layer with a dense SDPA fast path (``ibc_geo.nn.dense_attention``);
* :func:`sink_softmax`: the edge-wise softmax with the official zero-logit "sink";
* :class:`IntraBatchLayer`: attention + feed-forward transformer block;
* :class:`MessagePassingNetwork`: ``L`` layers, a BatchNorm neck and a bias-free classifier;
* :func:`attention_entropy`, :func:`same_class_attention_share`, :func:`attention_mass`,
  :func:`attention_logit_std`: per-node
  attention statistics.
"""
from ibc_geo.nn.analysis import (
    attention_entropy,
    attention_logit_std,
    attention_mass,
    attention_statistics,
    same_class_attention_share,
)
from ibc_geo.nn.attention import IntraBatchAttention
from ibc_geo.nn.dense_attention import sink_softmax
from ibc_geo.nn.layer import IntraBatchLayer
from ibc_geo.nn.mpn import MessagePassingNetwork

__all__ = [
    "IntraBatchAttention",
    "IntraBatchLayer",
    "MessagePassingNetwork",
    "attention_entropy",
    "attention_logit_std",
    "attention_mass",
    "attention_statistics",
    "same_class_attention_share",
    "sink_softmax",
]
