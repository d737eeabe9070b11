"""The backbone loss by name (loss.backbone): ce is the paper's numbers exactly; a pml loss through
the registry is that pml loss called directly; the config's refusals name what is wrong."""
import sys

import pytest
import torch
from pytorch_metric_learning import distances, losses, miners

from ibc_geo.config import ConfigError, load_config
from ibc_geo.modeling import IntraBatchLoss
from ibc_geo.nn.losses import BackboneCrossEntropy, MetricLearningLoss, accepted_keywords

C, D, B = 5, 8, 12
BASE = ["model.pretrained", "none", "model.embedding_dim", str(D)]


def cfg_of(*overrides):
    return load_config(None, BASE + list(overrides))


def batch(seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(3).repeat_interleave(4)
    f = torch.randn(B, D, generator=g, dtype=dtype).requires_grad_()
    zb = torch.randn(B, C, generator=g, dtype=dtype).requires_grad_()
    zm = torch.randn(B, C, generator=g, dtype=dtype).requires_grad_()
    return labels, f, zb, zm


def reference_loss(labels, zb, zm, T, eps, wb, wm):
    """IntraBatchLoss as it was before the registry (commit d5e5175), verbatim."""
    ce = torch.nn.CrossEntropyLoss(label_smoothing=eps)
    terms = {"backbone": ce(zb.float() / T, labels)}
    total = wb * terms["backbone"]
    terms["mpn"] = ce(zm.float() / T, labels)
    terms["total"] = total + wm * terms["mpn"]
    return terms


@pytest.mark.parametrize("source", ["default", "config"])
def test_ce_through_the_registry_is_the_paper_loss_bit_for_bit(source):
    T, eps, wb, wm = 0.2, 0.1, 0.7, 1.3
    if source == "default":  # the constructor as before: its backbone loss is the cross-entropy
        loss = IntraBatchLoss(T, eps, wb, wm)
    else:
        loss = IntraBatchLoss.from_config(cfg_of("loss.temperature", str(T), "loss.backbone_weight", str(wb),
                                                 "loss.mpn_weight", str(wm)), num_classes=C)
    assert isinstance(loss.backbone_loss, BackboneCrossEntropy) and not loss.reads_embeddings
    labels, _, zb, zm = batch()
    got = loss(labels, zb, zm)
    got["total"].backward()
    grads = zb.grad.clone(), zm.grad.clone()
    zb.grad = zm.grad = None
    want = reference_loss(labels, zb, zm, T, eps, wb, wm)
    want["total"].backward()
    for name in ("backbone", "mpn", "total"):
        assert torch.equal(got[name], want[name]), name
    assert torch.equal(grads[0], zb.grad) and torch.equal(grads[1], zm.grad)
    assert list(loss.parameters()) == [] and loss.state_dict() == {}  # nothing to optimise or save


def test_proxy_anchor_through_the_registry_is_the_pml_loss_with_its_proxies():
    cfg = cfg_of("loss.backbone", "pml/ProxyAnchorLoss", "loss.backbone_kwargs", "{margin: 0.2, alpha: 16}",
                 "loss.backbone_weight", "0.5")
    torch.manual_seed(3)
    loss = IntraBatchLoss.from_config(cfg, num_classes=C)
    inner = loss.backbone_loss.loss
    assert isinstance(inner, losses.ProxyAnchorLoss) and inner.proxies.shape == (C, D)  # filled in
    assert (inner.margin, inner.alpha) == (0.2, 16)
    direct = losses.ProxyAnchorLoss(C, D, margin=0.2, alpha=16)
    direct.proxies.data.copy_(inner.proxies.data)
    labels, f, zb, zm = batch()
    terms = loss(labels, zb, zm, embeddings=f)
    terms["total"].backward()
    got = f.grad.clone(), inner.proxies.grad.clone()
    assert torch.equal(zb.grad, torch.zeros_like(zb))  # the classifier: in the graph, gradient 0
    f.grad = None
    value = direct(f, labels)
    (0.5 * value).backward()
    assert torch.equal(terms["backbone"], value)
    assert torch.equal(terms["total"], 0.5 * value + terms["mpn"])
    assert torch.equal(got[0], f.grad)
    assert torch.equal(got[1], direct.proxies.grad)
    assert list(loss.state_dict()) == ["backbone_loss.loss.proxies"]


def test_multi_similarity_with_its_miner_is_the_pml_pair():
    cfg = cfg_of("loss.backbone", "pml/MultiSimilarityLoss", "loss.backbone_kwargs", "{alpha: 2, beta: 40, base: 0.5}",
                 "loss.miner", "pml/MultiSimilarityMiner", "loss.miner_kwargs", "{epsilon: 0.2}")
    loss = IntraBatchLoss.from_config(cfg)  # no proxies: no class count needed
    assert isinstance(loss.backbone_loss, MetricLearningLoss) and list(loss.parameters()) == []
    labels, f, zb, zm = batch(1)
    terms = loss(labels, zb, None, embeddings=f)
    terms["backbone"].backward()
    got = f.grad.clone()
    f.grad = None
    miner = miners.MultiSimilarityMiner(epsilon=0.2)
    pairs = miner(f, labels)
    assert 0 < len(pairs[0]) < 3 * 4 * 3  # the miner drops some positive pairs
    value = losses.MultiSimilarityLoss(alpha=2, beta=40, base=0.5)(f, labels, pairs)
    value.backward()
    assert torch.equal(terms["backbone"], value) and torch.equal(got, f.grad)
    assert set(terms) == {"backbone", "total"}


def test_pml_objects_by_name_and_given_sizes_win():
    cfg = cfg_of("loss.backbone", "pml/TripletMarginLoss",
                 "loss.backbone_kwargs", "{margin: 0.2, distance: CosineSimilarity}")
    loss = IntraBatchLoss.from_config(cfg)
    assert isinstance(loss.backbone_loss.loss.distance, distances.CosineSimilarity)
    labels, f, zb, _ = batch(2)
    direct = losses.TripletMarginLoss(margin=0.2, distance=distances.CosineSimilarity())
    assert torch.equal(loss(labels, zb, embeddings=f)["backbone"], direct(f, labels))
    cfg = cfg_of("loss.backbone", "pml/ProxyAnchorLoss", "loss.backbone_kwargs", "{num_classes: 7}")
    assert IntraBatchLoss.from_config(cfg, num_classes=C).backbone_loss.loss.proxies.shape == (7, D)
    with pytest.raises(ValueError, match="num_classes"):  # a proxy loss without its class count
        IntraBatchLoss.from_config(cfg_of("loss.backbone", "pml/ProxyAnchorLoss"))


def test_low_precision_embeddings_enter_the_pml_loss_in_float32():
    loss = IntraBatchLoss.from_config(cfg_of("loss.backbone", "pml/MultiSimilarityLoss"))
    labels, f, zb, _ = batch(4)
    half = loss(labels, zb, embeddings=f.detach().bfloat16())["backbone"]
    assert half.dtype == torch.float32
    full = losses.MultiSimilarityLoss()(f.detach().bfloat16().float(), labels)
    assert torch.equal(half, full)


def test_kwargs_merge_over_layers(tmp_path):
    base = tmp_path / "base.yaml"
    base.write_text("loss:\n  backbone: pml/ProxyAnchorLoss\n  backbone_kwargs: {margin: 0.1, alpha: 32}\n")
    cfg = load_config(str(base), BASE + ["loss.backbone_kwargs.alpha", "16"])
    assert dict(cfg.loss.backbone_kwargs) == {"margin": 0.1, "alpha": 16}


def test_accepted_keywords_follow_the_kwargs_chain():
    names, required = accepted_keywords(losses.ProxyAnchorLoss)
    assert names[:4] == ["num_classes", "embedding_size", "margin", "alpha"]
    assert {"distance", "reducer", "weight_regularizer", "collect_stats"} <= set(names)
    assert required == ["num_classes", "embedding_size"]
    names, required = accepted_keywords(losses.MultiSimilarityLoss)  # GenericPairLoss's mat_based_loss: its own
    assert "mat_based_loss" not in names and required == []


@pytest.mark.parametrize("overrides, fragments", [
    (["loss.backbone", "pml/ProxyAnchorLos"],
     ["'loss.backbone': 'pml/ProxyAnchorLos'", "no loss 'ProxyAnchorLos'", "closest: pml/ProxyAnchorLoss"]),
    (["loss.backbone", "pml/MultiSimilarityLoss", "loss.miner", "pml/MultiSimilarityMinr"],
     ["'loss.miner'", "no miner 'MultiSimilarityMinr'", "closest: pml/MultiSimilarityMiner"]),
    (["loss.backbone", "cross_entropy"], ["'loss.backbone': 'cross_entropy'", "allowed: ce or pml/<LossName>"]),
    (["loss.backbone", "pml/ProxyAnchorLoss", "loss.backbone_kwargs", "{marginn: 0.1, alpha: 32}"],
     ["'loss.backbone_kwargs'", "takes no keyword argument marginn (closest: margin)", "it takes: num_classes"]),
    (["loss.backbone", "pml/MultiSimilarityLoss", "loss.miner", "pml/MultiSimilarityMiner",
      "loss.miner_kwargs", "{eps: 0.1}"], ["'loss.miner_kwargs'", "takes no keyword argument eps (closest: epsilon)"]),
    (["loss.backbone", "pml/TripletMarginLoss", "loss.backbone_kwargs", "{distance: Cosine}"],
     ["distance: pytorch-metric-learning has no distances class 'Cosine'", "CosineSimilarity"]),
    (["loss.backbone", "pml/P2SGradLoss"], ["needs descriptors_dim: give it in loss.backbone_kwargs"]),
    (["loss.miner", "pml/MultiSimilarityMiner"], ["'loss.miner'", "ce has none"]),
    (["loss.backbone_kwargs", "{margin: 0.1}"], ["'loss.backbone_kwargs'", "loss.backbone ce reads loss.temperature"]),
    (["loss.backbone", "pml/MultiSimilarityLoss", "loss.miner_kwargs", "{epsilon: 0.1}"],
     ["'loss.miner_kwargs'", "loss.miner, which is empty"]),
    (["loss.backbone_kwargs", "0.1"], ["'loss.backbone_kwargs'", "takes a mapping of keyword arguments"]),
    (["loss.lr_mult", "-1"], ["'loss.lr_mult': -1.0; must be >= 0"]),
])
def test_bad_loss_configs_are_one_line_errors(overrides, fragments):
    with pytest.raises(ConfigError) as e:
        cfg_of(*overrides)
    message = str(e.value)
    assert "\n" not in message
    for fragment in fragments:
        assert fragment in message, message


def test_a_missing_pytorch_metric_learning_gives_the_install_line(monkeypatch):
    for name in [m for m in sys.modules if m == "pytorch_metric_learning" or m.startswith("pytorch_metric_learning.")]:
        monkeypatch.setitem(sys.modules, name, None)  # import raises ImportError
    with pytest.raises(ConfigError) as e:
        cfg_of("loss.backbone", "pml/ProxyAnchorLoss")
    assert "pytorch-metric-learning is not installed" in str(e.value)
    assert 'pip install -e ".[pml]"' in str(e.value)
    cfg_of()  # ce needs no pytorch-metric-learning
