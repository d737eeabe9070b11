r"""One transformer-style message passing layer: attention, then a feed-forward block (METHOD.md §1.3)."""
from __future__ import annotations

from typing import Optional, Tuple, Union

import torch
from torch import Tensor

from ibc_geo.nn.attention import IntraBatchAttention


class IntraBatchLayer(torch.nn.Module):
    r"""Post-norm transformer block whose attention runs over the batch graph.

    .. math::
        h_i' = \operatorname{LayerNorm}\big(h_i + \operatorname{Dropout}(m_i)\big), \qquad
        m_i = \operatorname{IntraBatchAttention}(h)_i

    .. math::
        h_i'' = \operatorname{LayerNorm}\Big(h_i' + \operatorname{Dropout}\big(
            \mathbf{W}_2 \operatorname{Dropout}(\operatorname{ReLU}(\mathbf{W}_1 h_i' + b_1)) + b_2\big)\Big)

    with :math:`\mathbf{W}_1 : d \to 4d`, :math:`\mathbf{W}_2 : 4d \to d` (the official
    ``DotAttentionLayer``: dropout inside the feed-forward block after the ReLU *and* on its
    residual branch). The attention projections are Xavier-uniform with zero biases; the
    feed-forward and LayerNorm parameters keep PyTorch's default init, as in the official code.

    Args:
        channels (int): Node feature size :math:`d`.
        heads (int, optional): Attention heads :math:`H`. (default: ``1``)
        dropout (float, optional): Dropout on the attention coefficients, inside the feed-forward
            block and on both residual branches. (default: ``0.1``)
        attention_path (str, optional): ``"auto"``, ``"dense"`` or ``"sparse"``, passed to
            :class:`IntraBatchAttention`. (default: ``"auto"``)
        sink (bool, optional): The attention's zero-logit sink (:class:`IntraBatchAttention`).
            (default: ``False``)
        logits (str, optional): ``"dot"`` or ``"cosine"`` attention logits
            (:class:`IntraBatchAttention`). (default: ``"dot"``)
        scale_init (float, optional): Initial scale of cosine logits. (default: ``10.0``)
        shared_qk_init (bool, optional): Key projection initialised as the query projection.
            (default: ``False``)

    Shapes:
        - **input:** node features :math:`(N, d)`, edge indices :math:`(2, E)`
        - **output:** node features :math:`(N, d)` (and ``((2, E), (E, H))`` attention weights
          when ``return_attention_weights`` is ``True``)
    """

    def __init__(self, channels: int, heads: int = 1, dropout: float = 0.1,
                 attention_path: str = "auto", sink: bool = False, logits: str = "dot",
                 scale_init: float = 10.0, shared_qk_init: bool = False) -> None:
        super().__init__()
        self.attention = IntraBatchAttention(channels, heads, dropout, attention_path, sink=sink, logits=logits,
                                             scale_init=scale_init, shared_qk_init=shared_qk_init)
        self.dropout1 = torch.nn.Dropout(dropout)
        self.norm1 = torch.nn.LayerNorm(channels)
        self.lin1 = torch.nn.Linear(channels, 4 * channels)
        self.dropout_ffn = torch.nn.Dropout(dropout)
        self.lin2 = torch.nn.Linear(4 * channels, channels)
        self.dropout2 = torch.nn.Dropout(dropout)
        self.norm2 = torch.nn.LayerNorm(channels)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        self.attention.reset_parameters()
        for module in (self.lin1, self.lin2, self.norm1, self.norm2):
            module.reset_parameters()

    def forward(self, x: Tensor, edge_index: Tensor,
                return_attention_weights: Optional[bool] = None
                ) -> Union[Tensor, Tuple[Tensor, Tuple[Tensor, Tensor]]]:
        if return_attention_weights:
            m, attention = self.attention(x, edge_index, return_attention_weights=True)
        else:
            m, attention = self.attention(x, edge_index), None
        h = self.norm1(x + self.dropout1(m))
        ffn = self.lin2(self.dropout_ffn(torch.relu(self.lin1(h))))
        h = self.norm2(h + self.dropout2(ffn))
        if attention is not None:
            return h, attention
        return h

    def __repr__(self) -> str:
        a = self.attention
        sink = ", sink=True" if a.sink else ""
        return f"{self.__class__.__name__}({a.channels}, heads={a.heads}, dropout={a.dropout}{sink})"
