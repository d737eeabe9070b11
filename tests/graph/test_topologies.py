"""Batch-graph topologies: edge sets against independent definitions, weights, errors, config."""
import pytest
import torch
from torch_geometric.data import Data

from ibc_geo.config import load_config
from ibc_geo.graph import (
    TOPOLOGIES,
    RandomTopology,
    Topology,
    build_topology,
    build_topology_from_config,
    pairwise_similarity,
)

ALL = ["full", "knn", "threshold", "none", "self", "random", "same_class"]


def batch(B=12, F=8, seed=0, classes=3):
    g = torch.Generator().manual_seed(seed)
    return Data(x=torch.randn(B, F, generator=g), y=torch.arange(B) % classes)


def edge_set(edge_index):
    return {(int(j), int(i)) for j, i in edge_index.t()}


def in_degree(edge_index, B):
    return torch.bincount(edge_index[1], minlength=B)


def make(name, **kw):
    if name in ("knn", "random"):
        kw.setdefault("k", 3)
    return build_topology(name, **kw)


def test_registry_holds_all_topologies():
    assert set(ALL) <= set(TOPOLOGIES.names())


def test_unknown_name_lists_registered_names():
    with pytest.raises(KeyError) as e:
        build_topology("fulll")
    for name in ALL:
        assert name in str(e.value)


@pytest.mark.parametrize("kind", ["correlation", "cosine"])
def test_similarity_against_numpy_formula(kind):
    x = batch().x.double()
    S = pairwise_similarity(x, kind)
    for i in range(3):
        for j in range(3):
            a, b = x[i], x[j]
            if kind == "correlation":
                a, b = a - a.mean(), b - b.mean()
            expected = float(a @ b / (a.norm() * b.norm()))
            assert S[i, j].item() == pytest.approx(expected, abs=1e-12)
    if kind == "correlation":  # Pearson = numpy's corrcoef
        assert torch.allclose(S, torch.corrcoef(x), atol=1e-12)


@pytest.mark.parametrize("name", ALL)
def test_common_contract(name):
    data = batch()
    x, y = data.x.clone(), data.y.clone()
    out = make(name)(data)
    assert out is not data and data.edge_index is None  # input left untouched
    assert torch.equal(out.x, x) and torch.equal(out.y, y)
    ei = out.edge_index
    assert ei.dtype == torch.long and ei.dim() == 2 and ei.size(0) == 2
    assert out.edge_attr.shape == (ei.size(1),)
    # Weight = relu(similarity of the endpoints), recomputed independently.
    S = torch.corrcoef(x)
    assert torch.allclose(out.edge_attr, S[ei[1], ei[0]].clamp_min(0), atol=1e-5)
    assert out.edge_attr.requires_grad is False
    assert len(edge_set(ei)) == ei.size(1)  # no duplicates
    assert (make(name).message_passing is False) == (name == "none")


def test_graph_building_does_not_enter_autograd():
    x = torch.randn(6, 4, requires_grad=True)
    out = build_topology("full")(Data(x=x))
    assert not out.edge_attr.requires_grad and out.x is x


def test_full_has_all_pairs_with_self_loops():
    ei = make("full")(batch(B=7)).edge_index
    assert edge_set(ei) == {(j, i) for i in range(7) for j in range(7)}


@pytest.mark.parametrize("kind", ["correlation", "cosine"])
def test_knn_in_degree_k_with_itself_and_most_similar(kind):
    data, k = batch(B=10), 4
    ei = build_topology("knn", k=k, similarity=kind)(data).edge_index
    assert torch.equal(in_degree(ei, 10), torch.full((10,), k))
    S = pairwise_similarity(data.x, kind)
    for i in range(10):
        src = sorted(int(j) for j in ei[0, ei[1] == i])
        assert i in src
        others = [j for j in range(10) if j != i]
        best = sorted(others, key=lambda j: -S[i, j].item())[: k - 1]
        assert sorted(best + [i]) == src


def test_knn_keeps_itself_for_degenerate_embeddings():
    x = torch.zeros(5, 3)  # every similarity is 0: the node itself must still be chosen
    ei = build_topology("knn", k=2)(Data(x=x)).edge_index
    assert all((i, i) in edge_set(ei) for i in range(5))


def test_knn_k_larger_than_batch_raises():
    with pytest.raises(ValueError, match="knn"):
        build_topology("knn", k=20)(batch(B=5))


@pytest.mark.parametrize("t", [-1.0, 0.0, 0.3, 1.5])
def test_threshold_edges_and_self_loops(t):
    data = batch(B=9)
    ei = build_topology("threshold", threshold=t)(data).edge_index
    S = torch.corrcoef(data.x).clamp_min(0)
    expected = {(j, i) for i in range(9) for j in range(9) if S[i, j] > t or i == j}
    assert edge_set(ei) == expected


def test_none_has_no_edges():
    topo = build_topology("none")
    out = topo(batch())
    assert topo.message_passing is False
    assert out.edge_index.shape == (2, 0) and out.edge_attr.shape == (0,)


def test_self_has_exactly_one_edge_itself():
    ei = build_topology("self")(batch(B=6)).edge_index
    assert torch.equal(ei, torch.arange(6).repeat(2, 1))


def test_random_degree_no_duplicates_no_self_besides_loop():
    B, k = 11, 4
    topo = build_topology("random", k=k, seed=3)
    ei = topo(batch(B=B)).edge_index
    assert torch.equal(in_degree(ei, B), torch.full((B,), k + 1))
    assert len(edge_set(ei)) == ei.size(1)
    assert all((i, i) in edge_set(ei) for i in range(B))


def test_random_changes_per_call_and_is_seeded():
    data = batch(B=16)
    a, b = build_topology("random", k=3, seed=7), build_topology("random", k=3, seed=7)
    graphs_a = [edge_set(a(data).edge_index) for _ in range(3)]
    graphs_b = [edge_set(b(data).edge_index) for _ in range(3)]
    assert graphs_a == graphs_b
    assert graphs_a[0] != graphs_a[1] != graphs_a[2]
    other = build_topology("random", k=3, seed=8)
    assert edge_set(other(data).edge_index) != graphs_a[0]


def test_random_leaves_global_rng_alone():
    torch.manual_seed(0)
    expected = torch.rand(3)
    torch.manual_seed(0)
    build_topology("random", k=2)(batch())
    assert torch.equal(torch.rand(3), expected)


def test_random_state_dict_round_trip_reproduces_next_graph():
    data = batch(B=16)
    a = build_topology("random", k=3, seed=1)
    a(data)
    state = a.state_dict()
    nxt = edge_set(a(data).edge_index)
    b = build_topology("random", k=3, seed=99)
    b.load_state_dict(state)
    assert edge_set(b(data).edge_index) == nxt


def test_random_uniform_over_other_nodes():
    # Each of the B-1 other nodes should be picked with probability k/(B-1).
    B, k, draws = 6, 2, 600
    topo = build_topology("random", k=k, seed=0)
    counts = torch.zeros(B, B)
    data = batch(B=B)
    for _ in range(draws):
        ei = topo(data).edge_index
        counts[ei[1], ei[0]] += 1
    off = counts[~torch.eye(B, dtype=torch.bool)] / draws
    assert torch.allclose(off, torch.full_like(off, k / (B - 1)), atol=0.08)


def test_stateless_topologies_have_empty_state():
    for name in ALL:
        if name != "random":
            topo = make(name)
            assert topo.state_dict() == {}
            topo.load_state_dict({})


def test_same_class_connects_exactly_same_label_pairs():
    data = batch(B=10, classes=3)
    ei = build_topology("same_class")(data).edge_index
    y = data.y
    assert edge_set(ei) == {(j, i) for i in range(10) for j in range(10) if y[i] == y[j]}
    assert build_topology("same_class").needs_labels


def test_same_class_without_labels_raises_naming_topology():
    with pytest.raises(ValueError, match="same_class"):
        build_topology("same_class")(Data(x=torch.randn(4, 3)))


def test_bad_similarity_raises():
    with pytest.raises(ValueError, match="similarity"):
        build_topology("full", similarity="euclid")


def test_repr():
    assert repr(build_topology("knn", k=5)) == "KNNTopology(k=5, similarity='correlation')"
    assert repr(build_topology("full", similarity="cosine")) == "FullTopology(similarity='cosine')"


@pytest.mark.parametrize("name", ALL)
def test_from_config(name):
    cfg = load_config(None, ["graph.topology", name, "graph.k", "4", "graph.threshold", "0.25",
                             "graph.similarity", "cosine", "seed", "5"], check=False)
    topo = build_topology_from_config(cfg)
    assert isinstance(topo, Topology) and topo.name == name and topo.similarity == "cosine"
    if name in ("knn", "random"):
        assert topo.k == 4
    if name == "threshold":
        assert topo.threshold == 0.25
    if name == "random":
        assert topo.seed == 5 and isinstance(topo, RandomTopology)


def test_adding_a_topology_is_one_class():
    from ibc_geo.graph import register_topology

    @register_topology("test_ring")
    class Ring(Topology):
        def select(self, sim, y):
            B = sim.size(0)
            mask = torch.zeros(B, B, dtype=torch.bool)
            mask[torch.arange(B), (torch.arange(B) + 1) % B] = True
            return mask

    try:
        ei = build_topology("test_ring")(batch(B=4)).edge_index
        assert edge_set(ei) == {(1, 0), (2, 1), (3, 2), (0, 3)}
    finally:
        TOPOLOGIES._items.pop("test_ring")


@pytest.mark.parametrize("name", ALL)
def test_pyg_batch_of_graphs_gets_one_graph_each(name):
    from torch_geometric.data import Batch

    graphs = [batch(B=B, seed=s) for s, B in enumerate((5, 7, 4))]
    out = make(name)(Batch.from_data_list(graphs))
    # The same as each graph alone, node ids offset; a fresh topology for the alone runs so that
    # the random one draws the same sequence of graphs.
    alone = make(name)
    expected_edges, expected_weights, offset = [], [], 0
    for g in graphs:
        single = alone(g)
        expected_edges.append(single.edge_index + offset)
        expected_weights.append(single.edge_attr)
        offset += g.num_nodes
    expected = torch.cat(expected_edges, dim=1)
    assert torch.equal(out.edge_index, expected)  # graphs in order, each ordered by target, source
    assert torch.allclose(out.edge_attr, torch.cat(expected_weights), atol=1e-6)
    ei = out.edge_index
    assert torch.equal(out.batch[ei[0]], out.batch[ei[1]])  # no edge between two graphs


def test_pyg_batch_with_interleaved_graph_ids():
    x = torch.randn(6, 4)
    batch_vector = torch.tensor([0, 1, 0, 1, 0, 1])
    out = build_topology("full")(Data(x=x, batch=batch_vector))
    assert edge_set(out.edge_index) == {(j, i) for i in range(6) for j in range(6) if (i - j) % 2 == 0}
    key = out.edge_index[1] * 6 + out.edge_index[0]
    assert torch.equal(key, key.sort().values)


def test_a_registered_topology_carries_its_config_knowledge():
    # A user's topology says which keys it reads; the config checks, the ablation grid's no-effect
    # rule and the hparams ask it, with no table to edit anywhere else.
    from ibc_geo.ablation.grid import no_effect_rule
    from ibc_geo.config import ConfigError
    from ibc_geo.engine.trainer import _hparams
    from ibc_geo.graph import register_topology

    @register_topology("test_hops")
    class Hops(Topology):
        uses = ("graph.k", "graph.similarity")

        def __init__(self, k=2, similarity="correlation"):
            super().__init__(similarity)
            self.k = k

        @classmethod
        def from_config(cls, cfg):
            return cls(k=cfg.graph.k, similarity=cfg.graph.similarity)

        def select(self, sim, y):
            B = sim.size(0)
            idx = torch.arange(B)
            mask = torch.zeros(B, B, dtype=torch.bool)
            for h in range(self.k):
                mask[idx, (idx + h) % B] = True
            return mask

    try:
        pk = ["sampler.classes_per_batch", "2", "sampler.samples_per_class", "3"]
        cfg = load_config(None, ["graph.topology", "test_hops", "graph.k", "3", "data.val_classes", "0.5"] + pk)
        assert build_topology_from_config(cfg).k == 3
        with pytest.raises(ConfigError, match=r"'graph.k': 6; must be in \[1, batch size\) = \[1, 6\) "
                                              r"for topology 'test_hops'"):
            load_config(None, ["graph.topology", "test_hops", "graph.k", "6"] + pk)
        other, no_effect = no_effect_rule("graph.k")
        assert other == "graph.topology" and "test_hops" not in no_effect and "full" in no_effect
        assert "test_hops" in no_effect_rule("graph.threshold")[1]
        assert "test_hops" not in no_effect_rule("mpn.num_heads")[1] and "none" in no_effect_rule("mpn.num_heads")[1]
        assert "graph.k" in _hparams(cfg, build_topology_from_config(cfg))
        full = load_config(None, ["graph.k", "3"] + pk + ["data.val_classes", "0.5"])
        assert "graph.k" not in _hparams(full, build_topology_from_config(full))
    finally:
        TOPOLOGIES._items.pop("test_hops")
