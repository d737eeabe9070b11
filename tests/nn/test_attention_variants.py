"""The attention variants beyond the paper (cosine logits, shared query/key init, input scale):
the official recipe unchanged at the defaults, both paths equal on every variant, each variant
against a direct computation, and the bad-argument errors."""
import math

import pytest
import torch
import torch.nn.functional as F
from torch_geometric.utils import softmax

from ibc_geo.graph import build_topology
from ibc_geo.nn import IntraBatchAttention, MessagePassingNetwork, attention_logit_std, attention_statistics
from ibc_geo.nn.dense_attention import sink_softmax
from torch_geometric.data import Data

D, H = 8, 2


def full_graph(N):
    return torch.stack([torch.arange(N).repeat(N), torch.arange(N).repeat_interleave(N)])


def knn_graph(x, k=3):
    return build_topology("knn", k=k)(Data(x=x)).edge_index


# ------------------------------------------------------------------ the official recipe, unchanged
# Recorded with the code before the variants existed (commit 113fd52): a 2-layer, 2-head MPN with
# the official input (L2 norm, input projection) and sink, float64, seed 0, dropout on (seed 2).
GOLDEN_LOSS = 2.6094403107564044
GOLDEN_U0 = [-1.1684041947834687, 1.2093121601933405, 0.7746388023193713, 1.29718416341071]
GOLDEN_XGRAD0 = [-0.00010343203823195084, 0.00020826290593814397, -0.00011515193835911729, 4.678603980647188e-05]
GOLDEN_GRAD_NORMS = {"input_proj.weight": 0.006424811139586727,
                     "layers.0.attention.lin_query.weight": 3.7996230697582335e-05,
                     "layers.1.attention.lin_key.weight": 0.0005706935455797519,
                     "classifier.weight": 0.978091463367463}
GOLDEN_KEYS = 40  # state_dict entries: no parameter added at the defaults


def test_defaults_reproduce_the_official_recipe_outputs_and_gradients():
    torch.manual_seed(0)
    mpn = MessagePassingNetwork(16, 5, num_layers=2, heads=2, dropout=0.1, sink=True, input_norm=True,
                                input_proj=True).double()
    x = torch.randn(12, 16, generator=torch.Generator().manual_seed(1), dtype=torch.float64, requires_grad=True)
    torch.manual_seed(2)
    u, logits = mpn(x, full_graph(12))
    loss = F.cross_entropy(logits, torch.arange(12) % 5) + u.pow(2).mean()
    loss.backward()
    assert loss.item() == pytest.approx(GOLDEN_LOSS, rel=1e-12)
    assert u[0, :4].tolist() == pytest.approx(GOLDEN_U0, rel=1e-10, abs=1e-14)
    assert x.grad[0, :4].tolist() == pytest.approx(GOLDEN_XGRAD0, rel=1e-9, abs=1e-16)
    params = dict(mpn.named_parameters())
    for name, norm in GOLDEN_GRAD_NORMS.items():
        assert params[name].grad.norm().item() == pytest.approx(norm, rel=1e-10), name
    assert len(mpn.state_dict()) == GOLDEN_KEYS
    assert not any("scale" in k for k in mpn.state_dict())


# ---------------------------------------------------------------------------- cosine logits
def make(path, logits="cosine", sink=False, scale_init=10.0, shared=False, seed=0):
    torch.manual_seed(seed)
    return IntraBatchAttention(D, H, dropout=0.0, attention_path=path, sink=sink, logits=logits,
                               scale_init=scale_init, shared_qk_init=shared).double()


def direct_logits(layer, x, edge_index):
    """Per edge and head, written out: tau_h * cos(W_q x_i, W_k x_j) or <q, k> / sqrt(C)."""
    N, C = x.size(0), D // H
    q = layer.lin_query(x).view(N, H, C)
    k = layer.lin_key(x).view(N, H, C)
    src, dst = edge_index
    out = []
    for e in range(edge_index.size(1)):
        i, j = int(dst[e]), int(src[e])
        row = []
        for h in range(H):
            if layer.logits == "cosine":
                tau = math.exp(min(float(layer.log_scale[h].detach()), math.log(100.0)))
                row.append(tau * F.cosine_similarity(q[i, h], k[j, h], dim=0))
            else:
                row.append((q[i, h] * k[j, h]).sum() / math.sqrt(C))
        out.append(torch.stack(row))
    return torch.stack(out)


@pytest.mark.parametrize("sink", [False, True])
@pytest.mark.parametrize("kind", ["full", "knn"])
def test_cosine_coefficients_equal_a_direct_computation(sink, kind):
    x = torch.randn(7, D, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    edge_index = full_graph(7) if kind == "full" else knn_graph(x)
    for path in ("sparse", "dense"):
        layer = make(path, sink=sink, scale_init=4.0)
        _, (ei, alpha) = layer(x, edge_index, return_attention_weights=True)
        s = direct_logits(layer, x, ei).detach()
        expected = sink_softmax(s, ei[1], 7) if sink else softmax(s, ei[1], num_nodes=7)
        assert torch.allclose(alpha, expected, rtol=0, atol=1e-12), path
        # The logits are bounded by tau: |s| <= 4.
        assert s.abs().max() <= 4.0 + 1e-12


@pytest.mark.parametrize("sink", [False, True])
@pytest.mark.parametrize("kind", ["full", "knn"])
@pytest.mark.parametrize("variant", [dict(logits="cosine"), dict(logits="cosine", shared=True),
                                     dict(logits="dot", shared=True)])
def test_dense_and_sparse_agree_on_every_variant_outputs_and_gradients(sink, kind, variant):
    x0 = torch.randn(9, D, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    edge_index = full_graph(9) if kind == "full" else knn_graph(x0)
    results = []
    for path in ("sparse", "dense"):
        layer = make(path, sink=sink, **variant)
        x = x0.clone().requires_grad_(True)
        out, (_, alpha) = layer(x, edge_index, return_attention_weights=True)
        plain = layer(x, edge_index)  # the dense path's SDPA branch (no coefficients asked)
        (out.pow(2).sum() + plain.sin().sum()).backward()
        grads = {n: p.grad.clone() for n, p in layer.named_parameters()}
        results.append((out.detach(), plain.detach(), alpha.detach(), x.grad.clone(), grads))
    (o1, p1, a1, g1, w1), (o2, p2, a2, g2, w2) = results
    for a, b in ((o1, o2), (p1, p2), (a1, a2), (g1, g2)):
        assert torch.allclose(a, b, rtol=0, atol=1e-10)
    assert w1.keys() == w2.keys()
    if variant["logits"] == "cosine":
        assert "log_scale" in w1 and w1["log_scale"].abs().sum() > 0  # the scale learns
    for name in w1:
        assert torch.allclose(w1[name], w2[name], rtol=0, atol=1e-10), name


def test_cosine_scale_is_a_per_head_parameter_clamped_at_100():
    layer = make("dense", scale_init=10.0)
    assert layer.log_scale.shape == (H,)
    assert torch.allclose(layer.scale(), torch.full((H,), 10.0, dtype=torch.float64))
    with torch.no_grad():
        layer.log_scale.fill_(math.log(1e4))
    assert torch.allclose(layer.scale(), torch.full((H,), 100.0, dtype=torch.float64))
    assert make("dense", logits="dot").scale() is None
    assert "logits='cosine'" in repr(layer)


def test_cosine_logits_ignore_the_input_norm():
    """A cosine is scale-invariant in q and k: scaling the input (and the biases with it, zero at
    init) leaves the coefficients unchanged, unlike the dot product's."""
    x = torch.randn(6, D, generator=torch.Generator().manual_seed(7), dtype=torch.float64)
    for logits, same in (("cosine", True), ("dot", False)):
        layer = make("dense", logits=logits)
        _, (_, a1) = layer(x, full_graph(6), return_attention_weights=True)
        _, (_, a2) = layer(20.0 * x, full_graph(6), return_attention_weights=True)
        assert torch.allclose(a1, a2, atol=1e-12) == same, logits


# ---------------------------------------------------------------------------- shared q/k init
def test_shared_init_copies_the_query_projection_into_the_key_projection():
    shared = make("dense", logits="dot", shared=True)
    assert torch.equal(shared.lin_key.weight, shared.lin_query.weight)
    default = make("dense", logits="dot")
    assert not torch.equal(default.lin_key.weight, default.lin_query.weight)
    # Same random stream: the query, value and output projections equal the default init's.
    for name in ("lin_query", "lin_value", "lin_out"):
        assert torch.equal(getattr(shared, name).weight, getattr(default, name).weight), name


def test_shared_init_starts_the_attention_on_same_class_nodes_where_the_default_init_does_not():
    """Two well separated clusters of 8: at init, shared q/k gives each node clearly more than the
    chance share (0.5) of its attention on its own cluster; independent Xavier q/k gives chance."""
    g = torch.Generator().manual_seed(11)
    centres = torch.randn(2, D, generator=g, dtype=torch.float64) * 3
    y = torch.arange(16) // 8
    x = centres[y] + 0.3 * torch.randn(16, D, generator=g, dtype=torch.float64)
    ei = full_graph(16)
    shares = {}
    for shared in (False, True):
        values = []
        for seed in range(10):
            layer = make("dense", logits="cosine", shared=shared, seed=seed).eval()
            _, (ei_out, alpha) = layer(x, ei, return_attention_weights=True)
            values.append(attention_statistics(ei_out, alpha.detach(), y, 16)["same_class"])
        shares[shared] = sum(values) / len(values)
    assert shares[True] > 0.75
    assert abs(shares[False] - 0.5) < 0.15


# ---------------------------------------------------------------------------- input scale
def test_input_scale_equals_scaling_the_input_projection_weight():
    """h0 = W_in (gamma x / |x|) + b: the same as gamma * W_in with gamma = 1."""
    x = torch.randn(10, D, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    torch.manual_seed(0)
    scaled = MessagePassingNetwork(D, 3, heads=H, input_norm=True, input_proj=True, input_scale=2.5).double().eval()
    plain = MessagePassingNetwork(D, 3, heads=H, input_norm=True, input_proj=True).double().eval()
    plain.load_state_dict(scaled.state_dict())
    with torch.no_grad():
        plain.input_proj.weight.mul_(2.5)
    u1, z1 = scaled(x, full_graph(10))
    u2, z2 = plain(x, full_graph(10))
    assert torch.allclose(u1, u2, atol=1e-12) and torch.allclose(z1, z2, atol=1e-12)
    with torch.no_grad():
        plain.input_proj.weight.div_(2.5)  # gamma = 1 again: another output
    assert not torch.allclose(u1, plain(x, full_graph(10))[0], atol=1e-6)


def test_input_scale_moves_the_logits_out_of_the_saddle():
    """The official input (|x| = 1, default-init projection) gives logits of std ~1e-2 per row;
    sqrt(d) lifts them by about d / 1 (the logits are quadratic in the input's scale)."""
    d = 64
    x = torch.randn(32, d, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    stds = {}
    for scale in (1.0, math.sqrt(d)):
        torch.manual_seed(0)
        mpn = MessagePassingNetwork(d, 4, heads=2, sink=True, input_norm=True, input_proj=True,
                                    input_scale=scale).double().eval()
        _, _, att = mpn(x, full_graph(32), return_attention_weights=True)
        ei, alpha = att[0]
        stds[scale] = float(attention_logit_std(ei, alpha.detach(), 32).mean())
    assert stds[1.0] < 0.05
    assert stds[math.sqrt(d)] > 20 * stds[1.0]


# ---------------------------------------------------------------------------- bad arguments
@pytest.mark.parametrize("kwargs, words", [
    (dict(logits="cos"), "logits must be one of dot, cosine"),
    (dict(logits="cosine", scale_init=0.0), "scale_init must be in (0, 100]"),
    (dict(logits="cosine", scale_init=float("nan")), "scale_init"),
    (dict(logits="cosine", scale_init=101.0), "scale_init"),
])
def test_bad_attention_arguments_are_refused(kwargs, words):
    with pytest.raises(ValueError) as info:
        IntraBatchAttention(D, H, **kwargs)
    assert words in str(info.value)


@pytest.mark.parametrize("kwargs, words", [
    (dict(input_norm=True, input_scale=0.0), "input_scale must be a finite number > 0"),
    (dict(input_norm=True, input_scale=float("inf")), "input_scale"),
    (dict(input_norm=False, input_scale=2.0), "needs input_norm=True"),
])
def test_bad_input_scale_is_refused(kwargs, words):
    with pytest.raises(ValueError) as info:
        MessagePassingNetwork(D, 3, heads=H, **kwargs)
    assert words in str(info.value)


# ---------------------------------------------------------------------------- logit std
@pytest.mark.parametrize("sink", [False, True])
def test_logit_std_read_from_the_coefficients_equals_the_logits_std(sink):
    g = torch.Generator().manual_seed(0)
    ei = torch.tensor([[0, 1, 2, 3, 0, 2, 1], [0, 0, 0, 0, 1, 1, 2]])
    s = 3 * torch.randn(7, 2, generator=g, dtype=torch.float64)
    alpha = sink_softmax(s, ei[1], 4) if sink else softmax(s, ei[1], num_nodes=4)
    got = attention_logit_std(ei, alpha, 4)
    rows = [s[:4], s[4:6], s[6:]]
    expected = [float(r.std(dim=0, unbiased=False).mean()) for r in rows] + [0.0]  # node 3: no edges
    assert got.tolist() == pytest.approx(expected, abs=1e-12)


def test_attention_statistics_of_uniform_attention_are_its_baselines():
    ei = full_graph(6)
    y = torch.tensor([0, 0, 0, 1, 1, 2])
    alpha = torch.full((36, 2), 1 / 6, dtype=torch.float64)
    stats = attention_statistics(ei, alpha, y, 6)
    assert stats["entropy"] == pytest.approx(math.log(6)) == pytest.approx(stats["entropy_uniform"])
    chance = (3 * 3 / 6 + 2 * 2 / 6 + 1 / 6) / 6
    assert stats["same_class"] == pytest.approx(chance) and stats["same_class_uniform"] == pytest.approx(chance)
    assert stats["logit_std"] == pytest.approx(0.0, abs=1e-12) and stats["mass_on_nodes"] == pytest.approx(1.0)
    assert stats["self"] == pytest.approx(1 / 6) and stats["self_uniform"] == pytest.approx(1 / 6)


def test_attention_statistics_tell_self_attention_from_attention_to_other_same_class_nodes():
    """All attention on the self loop: same-class share 1, of which all on itself; with the sink
    taking half, the shares over nodes are the same and the mass on nodes is 0.5."""
    ei = full_graph(4)
    y = torch.tensor([0, 0, 1, 1])
    alpha = (ei[0] == ei[1]).double().unsqueeze(-1) * 0.5
    stats = attention_statistics(ei, alpha, y, 4)
    assert stats["same_class"] == pytest.approx(1.0) and stats["self"] == pytest.approx(1.0)
    assert stats["same_class_uniform"] == pytest.approx(0.5) and stats["self_uniform"] == pytest.approx(0.25)
    assert stats["mass_on_nodes"] == pytest.approx(0.5) and stats["entropy"] == pytest.approx(0.0, abs=1e-9)
