"""IntraBatchModel.forward and the official recipe's start: the MPN's cross-entropy begins at ln C."""
import math

import pytest
import torch
import torch.nn.functional as F

from ibc_geo.config import load_config
from ibc_geo.modeling import IntraBatchLoss, IntraBatchModel

TINY = ["model.backbone", "resnet18", "model.pretrained", "none", "model.embedding_dim", "32",
        "mpn.num_heads", "2", "sampler.classes_per_batch", "3", "sampler.samples_per_class", "4"]


def test_forward_graph_on_detached_f_mpn_on_f_and_backbone_logits():
    torch.manual_seed(0)
    cfg = load_config(None, TINY, check=False)
    model = IntraBatchModel.from_config(cfg, num_classes=3).train()
    images = torch.randn(12, 3, 32, 32)
    labels = torch.arange(3).repeat_interleave(4)
    out = model(images, labels)
    f = out.embeddings
    # The graph's node features are f itself, detached (edges carry no gradient).
    assert out.graph.x.grad_fn is None and not out.graph.x.requires_grad
    assert torch.equal(out.graph.x, f.detach())
    assert torch.equal(out.graph.y, labels)
    assert out.graph.edge_index.size(1) == 12 * 12  # full graph, self loops included
    # The backbone logits come from the backbone classifier on f.
    assert torch.allclose(out.backbone_logits, model.backbone.classify(f), atol=1e-6)
    # The MPN receives f (not detached): its loss alone reaches the backbone's weights.
    model.zero_grad()
    F.cross_entropy(out.mpn_logits, labels).backward()
    trunk_grad = model.backbone.embedding.weight.grad
    assert trunk_grad is not None and trunk_grad.abs().sum() > 0
    assert model.backbone.classifier.weight.grad is None  # ... but not the backbone classifier


def test_without_message_passing_there_is_no_mpn():
    cfg = load_config(None, TINY + ["graph.topology", "none"], check=False)
    model = IntraBatchModel.from_config(cfg, num_classes=3)
    out = model(torch.randn(12, 3, 32, 32), torch.arange(3).repeat_interleave(4))
    assert model.mpn is None and out.mpn_logits is None and out.mpn_embeddings is None


# Training classes of each benchmark (METHOD.md §3); the demo trains on digits 0-4.
CONFIGS = {"configs/cub.yaml": 100, "configs/cars.yaml": 98, "configs/sop.yaml": 11318,
           "configs/inshop.yaml": 3997, "configs/demo.yaml": 5}


@pytest.mark.parametrize("cfg_file", sorted(CONFIGS))
def test_mpn_cross_entropy_starts_at_ln_c(cfg_file):
    # With the official classifier init (normal, std 0.001) the MPN's logits / T are near zero at
    # the start, so its label-smoothed CE is ln C (within a few percent). With Xavier init they are
    # much larger and the CE starts above ln C (far above for
    # CUB, Cars, In-Shop and the demo; least for SOP, whose T is 0.6 and C 11,318): that gradient went into the backbone.
    # A smaller backbone and image keep the test fast; the MPN sees normalised embeddings either way.
    torch.manual_seed(0)
    C = CONFIGS[cfg_file]
    cfg = load_config(cfg_file, ["model.pretrained", "none", "model.backbone", "resnet18"], check=False)
    model = IntraBatchModel.from_config(cfg, num_classes=C).train()
    loss = IntraBatchLoss.from_config(cfg)
    P, K = cfg.sampler.classes_per_batch, cfg.sampler.samples_per_class
    labels = torch.randperm(C)[:P].repeat_interleave(K)
    images = torch.randn(P * K, 3, 32, 32)
    with torch.no_grad():
        out = model(images, labels)
        mpn_ce = loss(labels, out.backbone_logits, out.mpn_logits)["mpn"].item()
        assert mpn_ce == pytest.approx(math.log(C), rel=0.03)
        torch.nn.init.xavier_uniform_(model.mpn.classifier.weight)  # what the first round did
        out = model(images, labels)
        xavier_ce = loss(labels, out.backbone_logits, out.mpn_logits)["mpn"].item()
        assert xavier_ce - math.log(C) > max(3 * abs(mpn_ce - math.log(C)), 0.01 * math.log(C))
