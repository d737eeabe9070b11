r"""Multi-head dot-product attention over the incoming edges of a batch graph.

:class:`IntraBatchAttention` is a :class:`torch_geometric.nn.MessagePassing` layer (only
``message`` is overridden) with a dense fast path through
:func:`torch.nn.functional.scaled_dot_product_attention` (SDPA). Both paths compute the same
function with the same parameters:

* ``"sparse"``: PyG's edge-wise gather / softmax / scatter; works on any graph (batches of graphs,
  directed graphs, isolated nodes, duplicate edges, empty ``edge_index``). Cost :math:`O(E d)`
  memory for the per-edge queries, keys and values.
* ``"dense"``: one SDPA call on all :math:`N` nodes; unmasked on the full graph, with a boolean
  :math:`N \times N` mask otherwise. Cost :math:`O(N^2)` whatever :math:`E` is, but with fused BLAS
  kernels. Needs a graph without duplicate edges (a mask cannot count an edge twice).
* ``"auto"`` (default): dense for the full graph and for graphs denser than
  :attr:`IntraBatchAttention.DENSE_MIN_DENSITY` edges per node pair (masked SDPA), sparse
  otherwise. Deciding costs one :math:`O(E)` scatter into an :math:`N^2` boolean mask (integer
  work outside autograd), and only when :math:`E \ge \rho N^2` (so sparse graphs pay nothing). The
  threshold comes from ``benchmarks/mpn.py`` (see ``benchmarks/RESULTS_mpn.md``).

Attention weights, when requested, are per edge and in ``edge_index`` order on both paths
(the pre-dropout coefficients, as in PyG's ``TransformerConv``). On the dense path they are
computed by an explicit softmax instead of SDPA (SDPA does not return them), still differentiable.

Compilation: ``torch.compile`` works on every path (tested with the ``aot_eager`` backend; the
dense/sparse decision reads tensor values and so causes a graph break before the attention).
TorchScript: ``torch.jit.script(IntraBatchAttention(...))`` works on every path, with and without
attention weights (PyG >= 2.5 scripts ``MessagePassing`` through its own templates; the old
``jittable()`` is a deprecated no-op); ``torch.jit.script`` itself is deprecated in recent torch.
:class:`~ibc_geo.nn.IntraBatchLayer` and :class:`~ibc_geo.nn.MessagePassingNetwork` are not
scriptable (their optional-return signatures); use ``torch.compile`` for them.
"""

import math
from typing import Optional, Tuple, Union

import torch
import torch.nn.functional as F
from torch import Tensor
from torch_geometric.nn import MessagePassing
from torch_geometric.utils import softmax

from ibc_geo.nn.dense_attention import dense_attention, dense_plan, sink_softmax
from ibc_geo.utils.tempdir import private_tempdir

PATHS = ("auto", "dense", "sparse")
#: How the attention logits are computed: the scaled dot product (the paper's) or Swin V2's cosine.
LOGITS = ("dot", "cosine")


class IntraBatchAttention(MessagePassing):
    r"""Transformer-style attention of each node over its incoming edges (METHOD.md §1.3).

    .. math::
        s_{ij}^{(h)} = \frac{\langle \mathbf{W}_q^{(h)} x_i, \mathbf{W}_k^{(h)} x_j \rangle}{\sqrt{d / H}},
        \qquad
        \alpha_{ij}^{(h)} = \frac{\exp s_{ij}^{(h)}}{[\text{sink}] + \sum_{k \in \mathcal{N}(i)} \exp s_{ik}^{(h)}}

    .. math::
        x_i' = \mathbf{W}_o \, \Big\Vert_{h=1}^{H} \sum_{j \in \mathcal{N}(i)}
            \operatorname{Dropout}(\alpha_{ij}^{(h)}) \, \mathbf{W}_v^{(h)} x_j + b_o

    where :math:`\mathbf{W}_q, \mathbf{W}_k, \mathbf{W}_v, \mathbf{W}_o` are ``Linear(d, d)``
    (with bias; :math:`\mathbf{W}^{(h)}` is the :math:`h`-th block of :math:`d/H` rows) and
    :math:`\mathcal{N}(i) = \{ j : (j, i) \in \mathcal{E} \}`; :math:`[\text{sink}]` is 1 with
    ``sink=True`` (a zero logit every node can attend to, the official code's softmax; the
    coefficients then sum to less than 1) and 0 for the plain softmax. A node without incoming
    edges receives the zero message, so its output is :math:`b_o`. Xavier-uniform weights, zero
    biases.

    With ``logits="cosine"`` (Swin Transformer V2) the logit is a cosine times a learnable per-head
    scale instead, bounded in :math:`[-\tau_h, \tau_h]` whatever the input's norm:

    .. math::
        s_{ij}^{(h)} = \tau_h \cos\big(\mathbf{W}_q^{(h)} x_i, \mathbf{W}_k^{(h)} x_j\big), \qquad
        \tau_h = \exp\big(\min(\theta_h, \ln \tau_{max})\big), \quad
        \theta_h^{(0)} = \ln(\text{scale\_init})

    (:math:`\tau_{max}` = :attr:`MAX_SCALE` = 100, Swin V2's clamp). With ``shared_qk_init`` the key
    projection starts as a copy of the query projection, so that
    :math:`s_{ij} \propto x_i^\top \mathbf{W}_q^\top \mathbf{W}_q x_j`, which for a random
    :math:`\mathbf{W}_q` is close to a multiple of :math:`\langle x_i, x_j \rangle`: the attention
    starts out preferring similar nodes instead of random ones (the two then train apart).

    Args:
        channels (int): Node feature size :math:`d` (input and output).
        heads (int, optional): Number of heads :math:`H`; must divide ``channels``.
            (default: ``1``)
        dropout (float, optional): Dropout probability on the attention coefficients, in training
            mode only. (default: ``0.1``)
        attention_path (str, optional): ``"auto"``, ``"dense"`` (SDPA) or ``"sparse"``
            (MessagePassing); see the module docstring. (default: ``"auto"``)
        sink (bool, optional): Add a zero logit to every node's softmax denominator (the
            official code; :func:`sink_softmax`). The dense path realises it as one extra
            all-zero key and value. (default: ``False``)
        logits (str, optional): ``"dot"`` (:math:`\langle q, k \rangle / \sqrt{d/H}`) or
            ``"cosine"`` (:math:`\tau_h \cos(q, k)`, a learnable per-head scale).
            (default: ``"dot"``)
        scale_init (float, optional): Initial :math:`\tau_h` of the cosine logits, in
            :math:`(0, 100]`; only with ``logits="cosine"``. (default: ``10.0``, Swin V2's)
        shared_qk_init (bool, optional): Initialise the key projection as a copy of the query
            projection. (default: ``False``)
        **kwargs (optional): Additional arguments of
            :class:`torch_geometric.nn.conv.MessagePassing` (``aggr`` stays ``"add"``).

    Shapes:
        - **input:** node features :math:`(N, d)`, edge indices :math:`(2, E)`
          (row 0 source :math:`j`, row 1 target :math:`i`)
        - **output:** node features :math:`(N, d)` or
          :math:`((N, d), ((2, E), (E, H)))` when ``return_attention_weights`` is ``True``
    """

    _alpha: Optional[Tensor]  # coefficients of the last sparse call, read back by forward

    #: Lowest edge density :math:`E / N^2` at which ``"auto"`` takes masked SDPA over the sparse
    #: path (full graphs always go dense). Measured on CPU by ``benchmarks/mpn.py``.
    DENSE_MIN_DENSITY: float = 0.03
    #: ``"auto"`` never builds a dense mask for more nodes than this (memory :math:`N^2` bytes).
    DENSE_MAX_NODES: int = 32768
    #: Dense attention whose :math:`(H, N, N)` score tensor would exceed this many bytes runs a few
    #: heads at a time, with activation checkpointing when gradients are needed: the peak memory
    #: stays bounded (B = 4096, H = 8, training: 3.2 GB -> 1.7 GB peak RSS, benchmarks/RESULTS_mpn.md)
    #: for one extra attention forward in backward.
    DENSE_CHUNK_BYTES: int = 128 * 2**20
    #: Upper bound of the cosine logits' learnable scale :math:`\tau_h` (Swin V2: 100).
    MAX_SCALE: float = 100.0

    def __init__(self, channels: int, heads: int = 1, dropout: float = 0.1,
                 attention_path: str = "auto", sink: bool = False, logits: str = "dot",
                 scale_init: float = 10.0, shared_qk_init: bool = False, **kwargs) -> None:
        kwargs.setdefault("aggr", "add")
        with private_tempdir():  # PyG's generated propagate file goes to a folder removed at exit
            super().__init__(node_dim=0, **kwargs)
        if heads < 1 or channels % heads:
            raise ValueError(f"heads = {heads} must be >= 1 and divide channels = {channels}")
        if attention_path not in PATHS:
            raise ValueError(f"attention_path must be one of {', '.join(PATHS)}, got {attention_path!r}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        if logits not in LOGITS:
            raise ValueError(f"logits must be one of {', '.join(LOGITS)}, got {logits!r}")
        if not (math.isfinite(scale_init) and 0.0 < scale_init <= self.MAX_SCALE):
            raise ValueError(f"scale_init must be in (0, {self.MAX_SCALE:g}], got {scale_init}")
        self.channels = channels
        self.heads = heads
        self.dropout = dropout
        self.attention_path = attention_path
        self.sink = bool(sink)
        self.logits = logits
        self.scale_init = float(scale_init)
        self.shared_qk_init = bool(shared_qk_init)
        # theta_h = ln tau_h of the cosine logits; no parameter at all for "dot" (state dicts unchanged).
        self.log_scale: Optional[torch.nn.Parameter] = (
            torch.nn.Parameter(torch.empty(heads)) if logits == "cosine" else None)
        self.log_scale_max = math.log(self.MAX_SCALE)
        self.lin_query = torch.nn.Linear(channels, channels)
        self.lin_key = torch.nn.Linear(channels, channels)
        self.lin_value = torch.nn.Linear(channels, channels)
        self.lin_out = torch.nn.Linear(channels, channels)
        # Instance copies of the class-level tuning constants (TorchScript reads only these).
        self.dense_min_density = float(self.DENSE_MIN_DENSITY)
        self.dense_max_nodes = int(self.DENSE_MAX_NODES)
        self.dense_chunk_bytes = int(self.DENSE_CHUNK_BYTES)
        self._alpha = None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        super().reset_parameters()
        for lin in (self.lin_query, self.lin_key, self.lin_value, self.lin_out):
            torch.nn.init.xavier_uniform_(lin.weight)
            torch.nn.init.zeros_(lin.bias)
        if self.shared_qk_init:
            with torch.no_grad():
                self.lin_key.weight.copy_(self.lin_query.weight)
        if self.log_scale is not None:
            torch.nn.init.constant_(self.log_scale, math.log(self.scale_init))

    def scale(self) -> Optional[Tensor]:
        r"""The per-head scale :math:`\tau_h` of the cosine logits, shape :math:`(H,)`; ``None`` for
        dot-product logits."""
        if self.log_scale is None:
            return None
        return self.log_scale.clamp(max=self.log_scale_max).exp()

    def dense_plan(self, edge_index: Tensor, num_nodes: int) -> Tuple[bool, Optional[Tensor]]:
        r"""``(use_dense, mask)`` for this layer's ``attention_path``
        (:func:`~ibc_geo.nn.dense_attention.dense_plan`)."""
        return dense_plan(edge_index, num_nodes, self.attention_path, self.dense_min_density,
                          self.dense_max_nodes)

    # ------------------------------------------------------------------ forward
    def forward(self, x: Tensor, edge_index: Tensor,
                return_attention_weights: Optional[bool] = None
                ) -> Union[Tensor, Tuple[Tensor, Tuple[Tensor, Tensor]]]:
        r"""Runs the forward pass.

        Args:
            x (torch.Tensor): Node features.
            edge_index (torch.Tensor): Edge indices (source row 0, target row 1).
            return_attention_weights (bool, optional): If ``True``, also return
                ``(edge_index, alpha)`` with the pre-dropout coefficients ``alpha`` of shape
                ``(E, H)``. (default: ``None``)
        """
        N, H, C = x.size(0), self.heads, self.channels // self.heads
        query = self.lin_query(x).view(N, H, C)
        key = self.lin_key(x).view(N, H, C)
        value = self.lin_value(x).view(N, H, C)
        need_alpha = return_attention_weights is not None and bool(return_attention_weights)
        # Logit scale: None = the dot product's 1 / sqrt(d/H); cosine logits carry tau_h in the query.
        score_scale: Optional[float] = None
        tau = self.scale()
        if tau is not None:
            query = F.normalize(query, dim=-1) * tau.view(1, H, 1)
            key = F.normalize(key, dim=-1)
            score_scale = 1.0

        use_dense, mask = self.dense_plan(edge_index, N)
        if use_dense:
            p = self.dropout if self.training else 0.0
            out, alpha = dense_attention(query, key, value, mask, edge_index, need_alpha, self.sink, p,
                                         self.dense_chunk_bytes, score_scale)
        else:
            out = self.propagate(edge_index, query=query, key=key, value=value, size=(N, N))
            alpha = self._alpha
            self._alpha = None
        out = self.lin_out(out.reshape(N, self.channels))
        if need_alpha:
            assert alpha is not None
            return out, (edge_index, alpha)
        return out

    def message(self, query_i: Tensor, key_j: Tensor, value_j: Tensor, index: Tensor,
                ptr: Optional[Tensor], size_i: Optional[int]) -> Tensor:
        if self.logits == "dot":
            alpha = (query_i * key_j).sum(dim=-1) / math.sqrt(query_i.size(-1))
        else:  # cosine: the query already carries tau_h
            alpha = (query_i * key_j).sum(dim=-1)
        if self.sink:
            alpha = sink_softmax(alpha, index, size_i)
        else:
            alpha = softmax(alpha, index, ptr, size_i)
        self._alpha = alpha
        alpha = F.dropout(alpha, p=self.dropout, training=self.training)
        return value_j * alpha.unsqueeze(-1)

    def __repr__(self) -> str:
        sink = ", sink=True" if self.sink else ""
        logits = f", logits={self.logits!r}" if self.logits != "dot" else ""
        return f"{self.__class__.__name__}({self.channels}, heads={self.heads}{sink}{logits})"
