"""IntraBatchLayer and MessagePassingNetwork: composition, paths, neck, config, compile."""
import math

import pytest
import torch
import torch.nn.functional as F
from torch_geometric.data import Data

from ibc_geo.config import load_config
from ibc_geo.graph import build_topology
from ibc_geo.modeling.model import build_mpn_from_config
from ibc_geo.nn import IntraBatchAttention, IntraBatchLayer, MessagePassingNetwork

D, H, C = 16, 4, 5


def knn_graph(N=10, seed=0):
    x = torch.randn(N, D, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    return x, build_topology("knn", k=4)(Data(x=x)).edge_index


def full_graph(N):
    return torch.stack([torch.arange(N).repeat(N), torch.arange(N).repeat_interleave(N)])


def test_str():
    assert str(IntraBatchLayer(512, 8, 0.1)) == "IntraBatchLayer(512, heads=8, dropout=0.1)"
    assert str(IntraBatchLayer(512, 8, sink=True)) == "IntraBatchLayer(512, heads=8, dropout=0.1, sink=True)"
    assert str(IntraBatchLayer(512, 8).attention) == "IntraBatchAttention(512, heads=8)"
    assert str(MessagePassingNetwork(512, 100, 2, 8)) == \
        "MessagePassingNetwork(512, num_classes=100, num_layers=2, heads=8)"


def test_layer_is_post_norm_transformer_block():
    torch.manual_seed(0)
    layer = IntraBatchLayer(D, H, 0.1).double().eval()
    with torch.no_grad():  # non-trivial LayerNorm affine parameters
        for norm in (layer.norm1, layer.norm2):
            norm.weight.uniform_(0.5, 1.5)
            norm.bias.normal_()
    x, edge_index = knn_graph()
    m = layer.attention(x, edge_index)
    h = F.layer_norm(x + m, (D,), layer.norm1.weight, layer.norm1.bias, 1e-5)
    ffn = torch.relu(h @ layer.lin1.weight.t() + layer.lin1.bias) @ layer.lin2.weight.t() + layer.lin2.bias
    expected = F.layer_norm(h + ffn, (D,), layer.norm2.weight, layer.norm2.bias, 1e-5)
    assert torch.allclose(layer(x, edge_index), expected, atol=1e-12)
    assert layer.lin1.out_features == 4 * D and layer.lin2.out_features == D


def test_layer_init():
    # The official DotAttentionLayer keeps PyTorch's default Linear init in the feed-forward block
    # (U(-1/sqrt(fan_in), 1/sqrt(fan_in)) for weight and bias), Xavier only in the attention.
    torch.manual_seed(0)
    layer = IntraBatchLayer(64, 4)
    for lin in (layer.lin1, layer.lin2):
        bound = 1 / math.sqrt(lin.in_features)
        xavier_std = math.sqrt(2 / (lin.in_features + lin.out_features))
        assert lin.weight.abs().max() <= bound and lin.bias.abs().max() <= bound
        assert lin.weight.std().item() == pytest.approx(bound / math.sqrt(3), rel=0.05)
        assert lin.weight.std().item() != pytest.approx(xavier_std, rel=0.05)
        assert lin.bias.abs().max() > bound / 2  # not zero-initialised
    att = layer.attention.lin_query
    assert att.weight.std().item() == pytest.approx(math.sqrt(2 / 128), rel=0.05)


def test_layer_feed_forward_has_dropout_after_the_relu_and_on_the_residual():
    # The official block: norm2(h' + dropout2(lin2(dropout(relu(lin1(h')))))). Record what the
    # inner dropout receives and check the block's output with it replaced by a known mask.
    torch.manual_seed(0)
    layer = IntraBatchLayer(D, H, 0.5).double().train()
    layer.attention.dropout = 0.0
    layer.dropout1.p = 0.0
    layer.dropout2.p = 0.0
    x, edge_index = knn_graph()
    seen = {}
    mask = (torch.rand(x.size(0), 4 * D, generator=torch.Generator().manual_seed(1)) > 0.5).double()

    def inner(t):
        seen["input"] = t
        return t * mask * 2.0

    layer.dropout_ffn.forward = inner
    out = layer(x, edge_index)
    h = layer.norm1(x + layer.attention(x, edge_index))
    assert torch.allclose(seen["input"], torch.relu(layer.lin1(h)), atol=1e-12)
    expected = layer.norm2(h + layer.lin2(torch.relu(layer.lin1(h)) * mask * 2.0))
    assert torch.allclose(out, expected, atol=1e-12)
    # ... and the residual branch has its own dropout: in training it changes the output.
    plain = IntraBatchLayer(D, H, 0.5).double()
    plain.load_state_dict(layer.state_dict())
    plain.attention.dropout, plain.dropout1.p, plain.dropout_ffn.p = 0.0, 0.0, 0.0
    plain.train()
    assert not torch.allclose(plain(x, edge_index), plain.eval()(x, edge_index))


@pytest.mark.parametrize("graph", ["full", "knn"])
def test_layer_paths_agree_with_gradients(graph):
    x, edge_index = knn_graph()
    if graph == "full":
        edge_index = full_graph(x.size(0))
    outs, grads = [], []
    for path in ("sparse", "dense"):
        torch.manual_seed(0)
        layer = IntraBatchLayer(D, H, 0.1, attention_path=path).double().eval()
        xg = x.clone().requires_grad_(True)
        out = layer(xg, edge_index)
        out.square().sum().backward()
        outs.append(out)
        grads.append([xg.grad] + [p.grad for p in layer.parameters()])
    assert torch.allclose(outs[0], outs[1], rtol=0, atol=1e-10)
    for g1, g2 in zip(*grads):
        assert torch.allclose(g1, g2, rtol=0, atol=1e-10)


def test_layer_returns_attention_weights():
    x, edge_index = knn_graph()
    layer = IntraBatchLayer(D, H).double().eval()
    h, (ei, alpha) = layer(x, edge_index, return_attention_weights=True)
    # The dense path computes weights by an explicit softmax instead of SDPA: equal up to rounding.
    assert torch.allclose(h, layer(x, edge_index), atol=1e-12) and torch.equal(ei, edge_index)
    assert alpha.shape == (edge_index.size(1), H)


def test_mpn_structure_neck_and_classifier():
    mpn = MessagePassingNetwork(D, C, num_layers=2, heads=H)
    assert len(mpn.layers) == 2 and all(isinstance(l, IntraBatchLayer) for l in mpn.layers)
    assert mpn.neck.bias.requires_grad is False and torch.all(mpn.neck.bias == 0)
    assert torch.all(mpn.neck.weight == 1)
    assert mpn.classifier.bias is None and mpn.classifier.weight.shape == (C, D)
    assert mpn.layers[0].attention.heads == H
    assert mpn.input_proj is None and not mpn.input_norm  # plain layer defaults


def test_mpn_classifier_init_is_normal_std_0001():
    # The official weights_init_classifier: N(0, 0.001^2), no bias. Xavier (std 0.06 for 512 -> 100)
    # or PyTorch's default (std 0.026) fail here.
    torch.manual_seed(0)
    mpn = MessagePassingNetwork(512, 100)
    w = mpn.classifier.weight
    assert w.std().item() == pytest.approx(0.001, rel=0.05) and abs(w.mean().item()) < 1e-4
    assert mpn.classifier.bias is None
    mpn.classifier.reset_parameters()  # PyTorch's default for comparison
    assert mpn.classifier.weight.std().item() > 0.01
    mpn.reset_parameters()
    assert mpn.classifier.weight.std().item() == pytest.approx(0.001, rel=0.05)


def test_mpn_input_norm_and_projection():
    torch.manual_seed(0)
    mpn = MessagePassingNetwork(D, C, num_layers=1, heads=H, input_norm=True, input_proj=True).double().eval()
    x, edge_index = knn_graph()
    h, logits = mpn(x, edge_index)
    # h = layer(W_in (x / ||x||) + b_in): composed by hand.
    x_unit = x / x.norm(dim=1, keepdim=True)
    expected = mpn.layers[0](x_unit @ mpn.input_proj.weight.t() + mpn.input_proj.bias, edge_index)
    assert torch.allclose(h, expected, atol=1e-12)
    # Normalised input: the scale of the embedding does not matter.
    h10, logits10 = mpn(10 * x, edge_index)
    assert torch.allclose(h10, h, atol=1e-12) and torch.allclose(logits10, logits, atol=1e-12)
    # The projection keeps PyTorch's default Linear init (the official dim_red): U(+-1/sqrt(d)).
    big = MessagePassingNetwork(512, C, input_proj=True)
    assert big.input_proj.weight.std().item() == pytest.approx(1 / math.sqrt(3 * 512), rel=0.05)
    assert big.input_proj.bias.abs().max() > 0


def test_mpn_concat_layers_head_sees_every_layer():
    torch.manual_seed(0)
    mpn = MessagePassingNetwork(D, C, num_layers=2, heads=H, concat_layers=True).double().eval()
    assert mpn.neck.num_features == 2 * D and mpn.classifier.weight.shape == (C, 2 * D)
    x, edge_index = knn_graph()
    u, logits = mpn(x, edge_index)
    h1 = mpn.layers[0](x, edge_index)
    h2 = mpn.layers[1](h1, edge_index)
    assert u.shape == (x.size(0), 2 * D)
    assert torch.allclose(u, torch.cat([h1, h2], dim=1), atol=1e-12)
    bn = (u - mpn.neck.running_mean) / torch.sqrt(mpn.neck.running_var + mpn.neck.eps)
    assert torch.allclose(logits, bn @ mpn.classifier.weight.t(), atol=1e-12)


def test_mpn_forward_composes_layers_neck_classifier():
    torch.manual_seed(0)
    mpn = MessagePassingNetwork(D, C, num_layers=2, heads=H).double().eval()
    with torch.no_grad():
        mpn.neck.running_mean.normal_()
        mpn.neck.running_var.uniform_(0.5, 2.0)
    x, edge_index = knn_graph()
    h, logits = mpn(x, edge_index)
    expected_h = mpn.layers[1](mpn.layers[0](x, edge_index), edge_index)
    assert torch.allclose(h, expected_h, atol=1e-12)
    bn = (h - mpn.neck.running_mean) / torch.sqrt(mpn.neck.running_var + mpn.neck.eps) * mpn.neck.weight
    assert torch.allclose(logits, bn @ mpn.classifier.weight.t(), atol=1e-12)


def test_mpn_attention_weights_per_layer():
    mpn = MessagePassingNetwork(D, C, num_layers=2, heads=H).double().eval()
    x, edge_index = knn_graph()
    h, logits, attention = mpn(x, edge_index, return_attention_weights=True)
    h2, logits2 = mpn(x, edge_index)
    assert torch.allclose(h, h2, atol=1e-12) and torch.allclose(logits, logits2, atol=1e-12)
    assert len(attention) == 2
    for ei, alpha in attention:
        assert torch.equal(ei, edge_index) and alpha.shape == (edge_index.size(1), H)
    assert not torch.allclose(attention[0][1], attention[1][1])  # layer 2 sees refined features


def test_mpn_training_step_keeps_neck_bias_zero_and_reaches_input():
    torch.manual_seed(0)
    mpn = MessagePassingNetwork(D, C, num_layers=1, heads=H).train()
    x = torch.randn(12, D, requires_grad=True)
    edge_index = full_graph(12)
    opt = torch.optim.SGD([p for p in mpn.parameters() if p.requires_grad], lr=0.1)
    _, logits = mpn(x, edge_index)
    F.cross_entropy(logits, torch.arange(12) % C).backward()
    opt.step()
    assert torch.all(mpn.neck.bias == 0) and mpn.neck.bias.grad is None
    assert x.grad is not None and x.grad.abs().sum() > 0


def test_mpn_from_config():
    cfg = load_config(None, ["model.embedding_dim", "32", "mpn.num_layers", "2", "mpn.num_heads", "8",
                             "mpn.dropout", "0.2", "mpn.attention_path", "sparse"], check=False)
    mpn = build_mpn_from_config(cfg, num_classes=7)
    att = mpn.layers[1].attention
    assert len(mpn.layers) == 2 and att.channels == 32 and att.heads == 8
    assert att.dropout == 0.2 and att.attention_path == "sparse"
    assert mpn.classifier.out_features == 7
    # The schema's defaults are the official recipe.
    assert att.sink and mpn.input_norm and mpn.input_proj is not None and not mpn.concat_layers
    off = load_config(None, ["mpn.attention_sink", "false", "mpn.input_norm", "false", "mpn.input_proj", "false",
                             "mpn.concat_layers", "true", "mpn.num_layers", "2"], check=False)
    mpn = build_mpn_from_config(off, num_classes=7)
    assert not mpn.layers[0].attention.sink and not mpn.input_norm and mpn.input_proj is None
    assert mpn.classifier.in_features == 2 * 512


def test_bad_num_layers():
    with pytest.raises(ValueError, match="num_layers"):
        MessagePassingNetwork(D, C, num_layers=0)


@pytest.mark.parametrize("path", ["sparse", "dense"])
def test_torch_compile_layer(path):
    # aot_eager: dynamo tracing + AOT autograd without C++ codegen, to stay cheap on 2 CPU cores
    # (inductor also works but compiles for ~2 minutes here).
    if not hasattr(torch, "compile"):
        pytest.skip("torch.compile is not available in this torch build")
    torch.manual_seed(0)
    layer = IntraBatchLayer(D, H, 0.1, attention_path=path).eval()
    x = torch.randn(10, D)
    edge_index = build_topology("knn", k=4)(Data(x=x)).edge_index
    compiled = torch.compile(layer, backend="aot_eager")
    x1, x2 = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
    out, ref = compiled(x1, edge_index), layer(x2, edge_index)
    assert torch.allclose(out, ref, atol=1e-6)
    out.sum().backward()
    ref.sum().backward()
    assert torch.allclose(x1.grad, x2.grad, atol=1e-6)
