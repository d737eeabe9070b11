"""The ResNet embedding backbone: pretrained weights, pooling, the loss."""
import urllib.error

import pytest
import torch
import torchvision
from torchvision.models import get_model

from ibc_geo.modeling import EmbeddingBackbone, IntraBatchLoss, PretrainedWeightsError


@pytest.mark.parametrize("name,feature_dim", [("resnet18", 512), ("resnet50", 2048)])
def test_feature_dims_and_shapes(name, feature_dim):
    model = EmbeddingBackbone(name, num_classes=7, embedding_dim=16).eval()
    assert model.feature_dim == feature_dim
    with torch.no_grad():
        f = model.embed(torch.randn(2, 3, 32, 32))
    assert f.shape == (2, 16) and model.classify(f).shape == (2, 7)


def test_max_pooling_is_the_max_of_the_feature_map():
    model = EmbeddingBackbone("resnet18", 3, 8, pooling="max", channels_last=False).eval()
    x = torch.randn(2, 3, 64, 64)
    t = model.trunk
    with torch.no_grad():
        fmap = t.layer4(t.layer3(t.layer2(t.layer1(t.maxpool(t.relu(t.bn1(t.conv1(x))))))))
        expected = model.embedding(fmap.amax(dim=(2, 3)))
        assert torch.allclose(model.embed(x), expected, atol=1e-5)


def test_channels_last_gives_the_same_embedding():
    torch.manual_seed(0)
    a = EmbeddingBackbone("resnet18", 3, 8, channels_last=False).eval()
    b = EmbeddingBackbone("resnet18", 3, 8, channels_last=True).eval()
    b.load_state_dict(a.state_dict())
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(a.embed(x), b.embed(x), atol=1e-4)


def test_local_state_dict_is_loaded(tmp_path):
    reference = get_model("resnet18", weights=None)
    path = tmp_path / "resnet18.pth"
    torch.save({"state_dict": {f"module.{k}": v for k, v in reference.state_dict().items()}}, path)
    model = EmbeddingBackbone("resnet18", 3, 8, pretrained=str(path))
    for key, value in model.trunk.state_dict().items():
        assert torch.equal(value, reference.state_dict()[key]), key


def test_state_dict_of_another_architecture_lists_keys(tmp_path):
    path = tmp_path / "resnet34.pth"
    torch.save(get_model("resnet34", weights=None).state_dict(), path)
    with pytest.raises(PretrainedWeightsError) as e:
        EmbeddingBackbone("resnet18", 3, 8, pretrained=str(path))
    assert "unexpected keys" in str(e.value) and "layer1.2" in str(e.value)


def test_unreadable_file(tmp_path):
    path = tmp_path / "junk.pth"
    path.write_bytes(b"not a checkpoint")
    with pytest.raises(PretrainedWeightsError, match="junk.pth"):
        EmbeddingBackbone("resnet18", 3, 8, pretrained=str(path))


def test_imagenet_offline_says_how_to_use_a_local_file(monkeypatch):
    def offline(self, *args, **kwargs):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(torchvision.models.get_model_weights("resnet18").IMAGENET1K_V1.__class__, "get_state_dict",
                        offline)
    with pytest.raises(PretrainedWeightsError) as e:
        EmbeddingBackbone("resnet18", 3, 8, pretrained="imagenet")
    assert "model.pretrained /path/to/resnet18-" in str(e.value)


def test_loss_is_weighted_label_smoothed_ce_over_temperature():
    torch.manual_seed(0)
    labels = torch.tensor([0, 1, 2, 1])
    zb, zm = torch.randn(4, 3), torch.randn(4, 3)
    loss = IntraBatchLoss(temperature=0.5, label_smoothing=0.1, backbone_weight=0.3, mpn_weight=2.0)
    terms = loss(labels, zb, zm)

    def smoothed_ce(z):
        logp = torch.log_softmax(z / 0.5, dim=1)
        target = torch.full_like(logp, 0.1 / 3)
        target[torch.arange(4), labels] += 0.9
        return -(target * logp).sum(1).mean()

    assert torch.allclose(terms["backbone"], smoothed_ce(zb))
    assert torch.allclose(terms["mpn"], smoothed_ce(zm))
    assert torch.allclose(terms["total"], 0.3 * smoothed_ce(zb) + 2.0 * smoothed_ce(zm))
    assert set(loss(labels, zb)) == {"backbone", "total"}
