"""IntraBatchAttention: hand-computed and independent dense references, both paths, graph cases."""
import math
import warnings

import pytest
import torch
import torch_geometric
from torch_geometric.data import Batch, Data

from ibc_geo.graph import build_topology
from ibc_geo.nn import IntraBatchAttention, attention_entropy, same_class_attention_share
from ibc_geo.nn.dense_attention import sdpa_by_heads

PATHS = ["sparse", "dense", "auto"]
D, H = 8, 2


def full_graph(N):
    return torch.stack([torch.arange(N).repeat(N), torch.arange(N).repeat_interleave(N)])


def graph(kind, N=9, seed=0):
    x = torch.randn(N, D, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    topo = {
        "full": build_topology("full"),
        "knn": build_topology("knn", k=3),
        "threshold": build_topology("threshold", threshold=0.1),
    }[kind]
    return x, topo(Data(x=x)).edge_index


def make(path="auto", seed=0, dtype=torch.float64, channels=D, heads=H, dropout=0.1, sink=False):
    torch.manual_seed(seed)
    return IntraBatchAttention(channels, heads, dropout=dropout, attention_path=path,
                               sink=sink).to(dtype).eval()


def reference(params, x, edge_index, heads, sink=False):
    """Attention written out per target node with explicit neighbour lists (no PyG, no SDPA);
    ``sink`` adds exp(0) = 1 to every softmax denominator (the official code's softmax)."""
    N, d = x.shape
    C = d // heads
    q = (x @ params["lin_query.weight"].t() + params["lin_query.bias"]).view(N, heads, C)
    k = (x @ params["lin_key.weight"].t() + params["lin_key.bias"]).view(N, heads, C)
    v = (x @ params["lin_value.weight"].t() + params["lin_value.bias"]).view(N, heads, C)
    rows = []
    for i in range(N):
        nbrs = edge_index[0, edge_index[1] == i]
        if nbrs.numel() == 0:
            rows.append(torch.zeros(heads, C, dtype=x.dtype))
            continue
        score = torch.einsum("hc,nhc->hn", q[i], k[nbrs]) / math.sqrt(C)
        if sink:  # direct formula, no stabilisation: the test's logits are small
            a = torch.exp(score) / (1.0 + torch.exp(score).sum(dim=1, keepdim=True))
        else:
            a = torch.exp(score - score.max(dim=1, keepdim=True).values)
            a = a / a.sum(dim=1, keepdim=True)
        rows.append(torch.einsum("hn,nhc->hc", a, v[nbrs]))
    m = torch.stack(rows).reshape(N, d)
    return m @ params["lin_out.weight"].t() + params["lin_out.bias"]


def three_node_graph(path, sink):
    """Identity projections (q = k = v = x), output bias (0.5, -0.5); node 0 hears itself, node 1
    nobody, node 2 hears 0 and 1."""
    m = IntraBatchAttention(2, 1, dropout=0.0, attention_path=path, sink=sink).double().eval()
    with torch.no_grad():
        for lin in (m.lin_query, m.lin_key, m.lin_value, m.lin_out):
            lin.weight.copy_(torch.eye(2))
        m.lin_out.bias.copy_(torch.tensor([0.5, -0.5]))
    x = torch.tensor([[1.0, 0.0], [0.0, 1.0], [2.0, 1.0]], dtype=torch.float64)
    return m, x, torch.tensor([[0, 0, 1], [0, 2, 2]])


def test_repr():
    assert str(IntraBatchAttention(512, heads=8)) == "IntraBatchAttention(512, heads=8)"
    assert str(IntraBatchAttention(512, heads=8, sink=True)) == "IntraBatchAttention(512, heads=8, sink=True)"


def test_init_xavier_zero_bias_and_reset():
    # Xavier-uniform on 64 x 256 weights: U(-b, b), b = sqrt(6 / (fan_in + fan_out)), std b / sqrt(3).
    # PyTorch's default (kaiming_uniform(a=sqrt(5)): b = 1 / sqrt(fan_in)) has std 0.072 here, not
    # 0.125, and a non-zero bias: this test fails for it.
    m = IntraBatchAttention(64, 4)
    bound = math.sqrt(6 / (64 + 64))
    for lin in (m.lin_query, m.lin_key, m.lin_value, m.lin_out):
        assert lin.weight.abs().max() <= bound
        assert lin.weight.std().item() == pytest.approx(bound / math.sqrt(3), rel=0.05)
        assert torch.all(lin.bias == 0)
    default = torch.nn.Linear(64, 64)
    assert default.weight.std().item() != pytest.approx(bound / math.sqrt(3), rel=0.05)
    before = m.lin_key.weight.clone()
    m.reset_parameters()
    assert not torch.equal(before, m.lin_key.weight)


def test_bad_arguments():
    with pytest.raises(ValueError, match="divide"):
        IntraBatchAttention(10, 3)
    with pytest.raises(ValueError, match="attention_path"):
        IntraBatchAttention(8, 2, attention_path="fast")


@pytest.mark.parametrize("path", PATHS)
def test_three_nodes_by_hand(path):
    # Identity projections: q = k = v = x. Node 0 hears itself, node 1 nobody, node 2 hears 0 and 1.
    m, x, edge_index = three_node_graph(path, sink=False)
    out, (ei, alpha) = m(x, edge_index, return_attention_weights=True)
    # Node 2: scores <x2, x0>/sqrt(2) = 2/sqrt(2), <x2, x1>/sqrt(2) = 1/sqrt(2).
    a0 = 1.0 / (1.0 + math.exp(1 / math.sqrt(2) - 2 / math.sqrt(2)))
    expected = torch.tensor([[1.5, -0.5], [0.5, -0.5], [a0 + 0.5, (1 - a0) - 0.5]], dtype=torch.float64)
    assert torch.allclose(out, expected, atol=1e-12)
    assert torch.equal(ei, edge_index)
    assert torch.allclose(alpha[:, 0], torch.tensor([1.0, a0, 1 - a0], dtype=torch.float64), atol=1e-12)


@pytest.mark.parametrize("sink", [False, True])
@pytest.mark.parametrize("kind", ["full", "knn", "threshold"])
@pytest.mark.parametrize("path", PATHS)
def test_equals_independent_dense_formula_with_gradients(kind, path, sink):
    x, edge_index = graph(kind)
    m = make(path, sink=sink)
    if path != "sparse":
        assert m.dense_plan(edge_index, x.size(0))[0]  # the dense path really runs
    params = {n: p.detach().clone().requires_grad_(True) for n, p in m.named_parameters()}
    x1, x2 = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
    out = m(x1, edge_index)
    ref = reference(params, x2, edge_index, H, sink=sink)
    assert torch.allclose(out, ref, rtol=0, atol=1e-10)
    w = torch.randn_like(out)
    (out * w).sum().backward()
    (ref * w).sum().backward()
    assert torch.allclose(x1.grad, x2.grad, rtol=0, atol=1e-10)
    for name, p in m.named_parameters():
        assert torch.allclose(p.grad, params[name].grad, rtol=0, atol=1e-10), name


@pytest.mark.parametrize("sink", [False, True])
@pytest.mark.parametrize("kind", ["full", "knn", "threshold"])
def test_dense_and_sparse_attention_weights_agree(kind, sink):
    x, edge_index = graph(kind)
    _, (_, a_sparse) = make("sparse", sink=sink)(x, edge_index, return_attention_weights=True)
    out, (ei, a_dense) = make("dense", sink=sink)(x, edge_index, return_attention_weights=True)
    assert torch.equal(ei, edge_index) and a_dense.shape == (edge_index.size(1), H)
    assert torch.allclose(a_sparse, a_dense, rtol=0, atol=1e-12)
    # The explicit-softmax branch (weights requested) equals the SDPA branch.
    assert torch.allclose(out, make("dense", sink=sink)(x, edge_index), rtol=0, atol=1e-12)


@pytest.mark.parametrize("path", PATHS)
def test_sink_three_nodes_by_hand(path):
    # Identity projections: q = k = v = x. Node 0 hears itself, node 1 nobody, node 2 hears 0 and 1.
    m, x, edge_index = three_node_graph(path, sink=True)
    out, (_, alpha) = m(x, edge_index, return_attention_weights=True)
    r = 1 / math.sqrt(2)
    a00 = math.exp(r) / (1 + math.exp(r))                      # <x0, x0> / sqrt(2) = 1 / sqrt(2)
    a20 = math.exp(2 * r) / (1 + math.exp(2 * r) + math.exp(r))  # <x2, x0> = 2, <x2, x1> = 1
    a21 = math.exp(r) / (1 + math.exp(2 * r) + math.exp(r))
    expected = torch.tensor([[a00 + 0.5, -0.5], [0.5, -0.5], [a20 + 0.5, a21 - 0.5]], dtype=torch.float64)
    assert torch.allclose(out, expected, atol=1e-12)
    assert torch.allclose(alpha[:, 0], torch.tensor([a00, a20, a21], dtype=torch.float64), atol=1e-12)


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("kind", ["full", "knn"])
def test_sink_coefficients_sum_to_one_minus_the_sink_share(path, kind):
    x, edge_index = graph(kind)
    m = make(path, sink=True)
    _, (ei, alpha) = m(x, edge_index, return_attention_weights=True)
    sums = torch.zeros(x.size(0), H, dtype=alpha.dtype).index_add_(0, ei[1], alpha)
    # sum_j a_ij = S / (1 + S) with S = sum_j exp(s_ij): below 1, and 1 - sum = 1 / (1 + S).
    N, C = x.size(0), D // H
    q = m.lin_query(x).view(N, H, C)
    k = m.lin_key(x).view(N, H, C)
    score = (q[ei[1]] * k[ei[0]]).sum(-1) / math.sqrt(C)
    S = torch.zeros(N, H, dtype=x.dtype).index_add_(0, ei[1], score.exp())
    assert torch.all(sums < 1)
    assert torch.allclose(sums, S / (1 + S), atol=1e-12)


@pytest.mark.parametrize("path", ["sparse", "dense"])
def test_sink_is_stable_for_large_logits(path):
    # Logits of several hundred: exp overflows without the clamped-max trick; the result is then the
    # plain softmax (the sink's 1 is negligible), on both paths.
    x, edge_index = graph("full")
    x = 40 * x
    out = make(path, sink=True)(x, edge_index)
    assert torch.isfinite(out).all()
    assert torch.allclose(out, make(path, sink=False)(x, edge_index), atol=1e-8)


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("kind", ["full", "knn"])
def test_attention_weights_are_distributions(path, kind):
    x, edge_index = graph(kind)
    _, (ei, alpha) = make(path)(x, edge_index, return_attention_weights=True)
    assert alpha.min() >= 0 and alpha.max() <= 1
    sums = torch.zeros(x.size(0), H, dtype=alpha.dtype).index_add_(0, ei[1], alpha)
    assert torch.allclose(sums, torch.ones_like(sums), atol=1e-12)


@pytest.mark.parametrize("path", PATHS)
def test_permutation_equivariance(path):
    x, edge_index = graph("knn", N=10)
    perm = torch.randperm(10, generator=torch.Generator().manual_seed(1))
    inv = torch.empty_like(perm)
    inv[perm] = torch.arange(10)
    m = make(path)
    out, (_, alpha) = m(x, edge_index, return_attention_weights=True)
    out_p, (_, alpha_p) = m(x[perm], inv[edge_index], return_attention_weights=True)
    assert torch.allclose(out_p, out[perm], atol=1e-12)
    assert torch.allclose(alpha_p, alpha, atol=1e-12)  # same edges, same order


@pytest.mark.parametrize("path", PATHS)
def test_batch_of_two_graphs_equals_each_alone(path):
    g1 = Data(x=torch.randn(5, D, dtype=torch.float64), edge_index=full_graph(5))
    x2 = torch.randn(3, D, dtype=torch.float64)
    g2 = build_topology("knn", k=2)(Data(x=x2))
    g2 = Data(x=g2.x, edge_index=g2.edge_index)
    batch = Batch.from_data_list([g1, g2])
    m = make(path)
    out = m(batch.x, batch.edge_index)
    assert torch.allclose(out[:5], m(g1.x, g1.edge_index), atol=1e-12)
    assert torch.allclose(out[5:], m(g2.x, g2.edge_index), atol=1e-12)


@pytest.mark.parametrize("sink", [False, True])
@pytest.mark.parametrize("path", PATHS)
def test_isolated_nodes_get_the_output_bias(path, sink):
    x = torch.randn(5, D, dtype=torch.float64, requires_grad=True)
    edge_index = torch.tensor([[0, 1, 3, 0], [1, 1, 1, 3]])  # directed; nodes 0, 2, 4 hear nobody
    m = make(path, sink=sink)
    with torch.no_grad():
        m.lin_out.bias.normal_()
    out = m(x, edge_index)
    for i in (0, 2, 4):
        assert torch.allclose(out[i], m.lin_out.bias, atol=1e-12)
    ref = reference(dict(m.named_parameters()), x, edge_index, H, sink=sink)
    assert torch.allclose(out, ref, atol=1e-10)
    out.sum().backward()
    assert torch.isfinite(x.grad).all() and x.grad[[0, 1, 3]].abs().sum() > 0


@pytest.mark.parametrize("path", PATHS)
def test_empty_edge_index(path):
    x = torch.randn(4, D, dtype=torch.float64, requires_grad=True)
    m = make(path)
    with torch.no_grad():
        m.lin_out.bias.normal_()
    out, (ei, alpha) = m(x, torch.empty(2, 0, dtype=torch.long), return_attention_weights=True)
    assert torch.allclose(out, m.lin_out.bias.expand(4, D))
    assert ei.shape == (2, 0) and alpha.shape == (0, H)
    out.sum().backward()  # no NaN from empty softmax
    assert torch.isfinite(m.lin_out.bias.grad).all()


def test_duplicate_edges_auto_falls_back_and_dense_refuses():
    x = torch.randn(4, D, dtype=torch.float64)
    edge_index = torch.cat([full_graph(4), torch.tensor([[1], [0]])], dim=1)  # (1 -> 0) twice
    ref = reference(dict(make("sparse").named_parameters()), x, edge_index, H)
    assert torch.allclose(make("auto")(x, edge_index), ref, atol=1e-10)
    with pytest.raises(ValueError, match="duplicate"):
        make("dense")(x, edge_index)


def test_auto_rule_picks_dense_for_full_and_sparse_for_sparse_graphs():
    m = make("auto")
    assert m.dense_plan(full_graph(64), 64) == (True, None)
    ring = torch.stack([torch.arange(1000), (torch.arange(1000) + 1) % 1000])
    assert m.dense_plan(ring, 1000)[0] is False
    assert make("sparse").dense_plan(full_graph(8), 8)[0] is False


@pytest.mark.parametrize("path", PATHS)
def test_gradients_reach_inputs(path):
    x, edge_index = graph("knn")
    x.requires_grad_(True)
    make(path).train()(x, edge_index).square().sum().backward()
    assert x.grad is not None and (x.grad.abs().sum(dim=1) > 0).all()


@pytest.mark.parametrize("path", ["sparse", "dense"])
def test_training_dropout_is_unbiased_and_off_in_eval(path):
    x, edge_index = graph("full", N=4)
    m = make(path, dropout=0.3)
    expected = m(x, edge_index)
    assert torch.equal(expected, m(x, edge_index))  # eval: deterministic
    m.train()
    torch.manual_seed(0)
    with torch.no_grad():
        draws = torch.stack([m(x, edge_index) for _ in range(800)])
    assert not torch.allclose(draws[0], expected)
    spread = draws.std(0).max()
    assert torch.allclose(draws.mean(0), expected, atol=5 * spread.item() / math.sqrt(800))


def test_self_loops_reduce_to_value_then_output_projection():
    x = torch.randn(6, D, dtype=torch.float64)
    edge_index = build_topology("self")(Data(x=x)).edge_index
    for path in PATHS:
        m = make(path)
        out, (_, alpha) = m(x, edge_index, return_attention_weights=True)
        assert torch.allclose(out, m.lin_out(m.lin_value(x)), atol=1e-12)
        assert torch.allclose(alpha, torch.ones_like(alpha))


def test_same_class_attention_share_is_one_on_same_class_graph():
    y = torch.tensor([0, 0, 1, 1, 1, 2])
    x = torch.randn(6, D, dtype=torch.float64)
    edge_index = build_topology("same_class")(Data(x=x, y=y)).edge_index
    _, (ei, alpha) = make("auto")(x, edge_index, return_attention_weights=True)
    share = same_class_attention_share(ei, alpha, y)
    assert torch.allclose(share, torch.ones(6, dtype=share.dtype), atol=1e-12)
    # ... and equals the same-class count share under uniform attention on the full graph.
    full = full_graph(6)
    uniform = torch.full((36, H), 1 / 6, dtype=torch.float64)
    expected = torch.tensor([2, 2, 3, 3, 3, 1], dtype=torch.float64) / 6
    assert torch.allclose(same_class_attention_share(full, uniform, y), expected)


def test_attention_entropy_against_direct_formula():
    x, edge_index = graph("threshold")
    _, (ei, alpha) = make("sparse")(x, edge_index, return_attention_weights=True)
    ent = attention_entropy(ei, alpha, x.size(0)).detach()
    for i in range(x.size(0)):
        a = alpha[ei[1] == i]
        assert ent[i].item() == pytest.approx(float((-(a * a.log()).sum(0)).mean().detach()), abs=1e-12)
    # Uniform attention over n sources has entropy log n; an isolated node 0.
    full = full_graph(4)
    assert torch.allclose(attention_entropy(full, torch.full((16, 3), 0.25), 5),
                          torch.tensor([math.log(4)] * 4 + [0.0]))


def _run_both_backends(monkeypatch, scatter_on):
    monkeypatch.setattr(torch_geometric.typing, "WITH_TORCH_SCATTER", scatter_on)
    x, edge_index = graph("threshold")
    m = make("sparse")
    # An EdgeIndex sorted by target makes PyG pass `ptr`, i.e. the segment (CSR) code path.
    csc = torch_geometric.EdgeIndex(edge_index, sparse_size=(x.size(0), x.size(0)), sort_order="col")
    results = []
    for ei in (edge_index, csc):
        xg = x.clone().requires_grad_(True)
        out, (_, alpha) = m(xg, ei, return_attention_weights=True)
        out.square().sum().backward()
        results.append((out.detach(), alpha.detach(), xg.grad))
    return results


def test_torch_scatter_free_backend_index_and_csr_paths_agree(monkeypatch):
    (o1, a1, g1), (o2, a2, g2) = _run_both_backends(monkeypatch, False)
    assert torch.allclose(o1, o2, atol=1e-12) and torch.allclose(a1, a2, atol=1e-12)
    assert torch.allclose(g1, g2, atol=1e-12)


def test_torch_scatter_backend_equals_torch_backend(monkeypatch):
    pytest.importorskip("torch_scatter", reason="torch-scatter is not installed: only PyG's "
                        "torch-native scatter back end can be tested here")
    import torch_scatter

    calls = []
    segment_csr = torch_scatter.segment_csr

    def counting(*args, **kwargs):
        calls.append(1)
        return segment_csr(*args, **kwargs)

    monkeypatch.setattr(torch_geometric.typing.torch_scatter, "segment_csr", counting)
    with_scatter = _run_both_backends(monkeypatch, True)
    assert calls, "PyG did not route through torch_scatter"
    n_calls = len(calls)
    without = _run_both_backends(monkeypatch, False)
    assert len(calls) == n_calls  # the torch-native run does not touch torch_scatter
    for a, b in zip(with_scatter, without):
        for t1, t2 in zip(a, b):
            assert torch.allclose(t1, t2, atol=1e-12)


@pytest.mark.parametrize("sink", [False, True])
@pytest.mark.parametrize("path", PATHS)
def test_torchscript(path, sink):
    # PyG >= 2.5 scripts MessagePassing layers directly (jittable() is a deprecated no-op);
    # torch.jit.script itself is deprecated in recent torch, hence the silenced warning.
    x, edge_index = graph("knn")
    m = make(path, sink=sink)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        scripted = torch.jit.script(m)
    out, (_, alpha) = scripted(x, edge_index, True)
    ref, (_, ref_alpha) = m(x, edge_index, return_attention_weights=True)
    assert torch.allclose(out, ref, atol=1e-12) and torch.allclose(alpha, ref_alpha, atol=1e-12)
    assert torch.allclose(scripted(x, edge_index), m(x, edge_index), atol=1e-12)


@pytest.mark.parametrize("sink", [False, True])
@pytest.mark.parametrize("kind", ["full", "knn"])
def test_dense_by_head_chunks_equals_one_shot(kind, sink):
    x, edge_index = graph(kind)
    one_shot = make("dense", sink=sink)
    chunked = make("dense", sink=sink)
    chunked.dense_chunk_bytes = 1  # one head per chunk, checkpointed
    x1, x2 = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
    o1, o2 = one_shot(x1, edge_index), chunked(x2, edge_index)
    assert torch.allclose(o1, o2, rtol=0, atol=1e-12)
    o1.square().sum().backward()
    o2.square().sum().backward()
    assert torch.allclose(x1.grad, x2.grad, rtol=0, atol=1e-12)
    for p1, p2 in zip(one_shot.parameters(), chunked.parameters()):
        assert torch.allclose(p1.grad, p2.grad, rtol=0, atol=1e-12)


def test_dense_chunk_checkpoint_replays_the_same_dropout():
    # With dropout, the checkpointed chunks must recompute the same masks in backward: gradients
    # equal those of the same per-head loop without checkpointing under the same seed.
    x, edge_index = graph("full")
    m = make("dense", dropout=0.5).train()
    q, k, v = (torch.randn(1, H, x.size(0), D // H, dtype=torch.float64, requires_grad=True)
               for _ in range(3))
    grads, outs = [], []
    for use_checkpoint in (False, True):
        torch.manual_seed(3)
        out = sdpa_by_heads(q, k, v, None, 0.5, m.dense_chunk_bytes, use_checkpoint=use_checkpoint)
        out.square().sum().backward()
        outs.append(out.detach())
        grads.append([t.grad.clone() for t in (q, k, v)])
        for t in (q, k, v):
            t.grad = None
    assert torch.equal(outs[0], outs[1])
    for g1, g2 in zip(*grads):
        assert torch.allclose(g1, g2, rtol=0, atol=1e-12)


def test_statistics_with_the_sink_are_over_nodes():
    from ibc_geo.nn import attention_mass

    y = torch.tensor([0, 0, 1, 1, 1, 2])
    x = torch.randn(6, D, dtype=torch.float64)
    ei = build_topology("same_class")(Data(x=x, y=y)).edge_index
    _, (ei, alpha) = make("sparse", sink=True)(x, ei, return_attention_weights=True)
    mass = attention_mass(ei, alpha, 6)
    assert torch.all(mass < 1) and torch.all(mass > 0)
    # All edges are same-class: the share over nodes is 1 though the sink takes 1 - mass.
    assert torch.allclose(same_class_attention_share(ei, alpha, y), torch.ones(6, dtype=torch.float64))
    # Entropy equals that of the renormalised distribution, by direct formula.
    a = alpha / torch.zeros(6, H, dtype=alpha.dtype).index_add_(0, ei[1], alpha)[ei[1]]
    direct = torch.zeros(6, H, dtype=a.dtype).index_add_(0, ei[1], -a * a.log()).mean(1)
    assert torch.allclose(attention_entropy(ei, alpha, 6), direct, atol=1e-12)
    _, (_, plain) = make("sparse", sink=False)(x, ei, return_attention_weights=True)
    assert torch.allclose(attention_mass(ei, plain, 6), torch.ones(6, dtype=torch.float64))
