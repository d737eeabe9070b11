"""The backbone registry (ibc_geo.nn.backbones): torchvision ResNets unchanged to the bit, any timm
model by name with its own preprocessing, local checkpoints, and the bad-input messages."""
import logging

import pytest
import torch
from torchvision.models import get_model

from ibc_geo.config import ConfigError, load_config
from ibc_geo.data import build_transforms
from ibc_geo.modeling import EmbeddingBackbone, IntraBatchLoss, IntraBatchModel
from ibc_geo.nn.backbones import PretrainedWeightsError, backbone_entry

timm = pytest.importorskip("timm")

TINY_VIT = {"img_size": 32, "patch_size": 8, "depth": 2, "embed_dim": 48, "num_heads": 2}


def small_resnet_cfg(*extra):
    return load_config(None, ["model.backbone", "resnet18", "model.pretrained", "none", "model.embedding_dim", "16",
                              "mpn.num_heads", "2", "data.image_size", "32", *extra])


def test_resnet_numbers_are_those_recorded_before_the_registry():
    # Recorded with the code before the backbone registry (commit 6ea9541 + the same script, one
    # thread): the same seed gives the same weights, embeddings, losses and gradients. Tolerance 1e-4:
    # other thread counts and CPUs sum the convolutions in another order (last float32 bits); any real
    # change (init order, pooling, layers) moves these sums by far more. Bit-identity: the next test.
    cfg = small_resnet_cfg()
    torch.manual_seed(0)
    model = IntraBatchModel.from_config(cfg, num_classes=4)
    images = torch.rand(8, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    labels = torch.tensor([0, 0, 1, 1, 2, 2, 3, 3])
    out = model(images, labels)
    terms = IntraBatchLoss.from_config(cfg)(out.labels, out.backbone_logits, out.mpn_logits)
    terms["total"].backward()
    model.eval()
    with torch.no_grad():
        emb = model.embed(images)
    assert len(model.state_dict()) == 148
    assert float(emb.double().sum()) == pytest.approx(-0.5591518766013905, rel=1e-4)
    assert float(emb.double().abs().sum()) == pytest.approx(4.257589672575705, rel=1e-4)
    assert float(terms["total"]) == pytest.approx(4.300777435302734, rel=1e-4)
    assert float(terms["mpn"]) == pytest.approx(1.395073413848877, rel=1e-4)
    assert float(model.backbone.trunk.conv1.weight.grad.double().abs().sum()) == pytest.approx(19085.946780437138,
                                                                                                rel=1e-4)
    assert repr(build_transforms(cfg, False)).count("interpolation=bilinear") == 1 and "size=36" in repr(
        build_transforms(cfg, False))
    assert list(cfg.data.mean) == [0.485, 0.456, 0.406] and list(cfg.data.std) == [0.229, 0.224, 0.225]


@pytest.mark.parametrize("pooling", ["max", "avg"])
def test_resnet_trunk_is_torchvisions_bit_for_bit(pooling):
    torch.manual_seed(3)
    ours = EmbeddingBackbone("resnet18", 5, 16, pooling=pooling)
    torch.manual_seed(3)
    reference = get_model("resnet18", weights=None)
    reference.fc = torch.nn.Identity()
    reference.avgpool = torch.nn.AdaptiveMaxPool2d(1) if pooling == "max" else torch.nn.AdaptiveAvgPool2d(1)
    for key, value in reference.state_dict().items():
        assert torch.equal(ours.trunk.state_dict()[key], value), key
    x = torch.rand(2, 3, 40, 40)
    ours.eval(), reference.eval()
    with torch.no_grad():
        assert torch.equal(ours.trunk(x.contiguous(memory_format=torch.channels_last)),
                           reference.to(memory_format=torch.channels_last)(x.contiguous(memory_format=torch.channels_last)))


def test_vit_feature_is_timms_forward_features_and_head_pre_logits():
    torch.manual_seed(0)
    backbone = EmbeddingBackbone("timm/vit_tiny_patch16_224", 3, 16, pooling="model", channels_last=False,
                                 backbone_kwargs=TINY_VIT).eval()
    torch.manual_seed(0)
    reference = timm.create_model("vit_tiny_patch16_224", pretrained=False, **TINY_VIT).eval()
    reference.load_state_dict(backbone.trunk.state_dict(), strict=False)  # same weights, its own head kept
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        expected = reference.forward_head(reference.forward_features(x), pre_logits=True)
        assert backbone.feature_dim == 48
        torch.testing.assert_close(backbone.trunk(x), expected, rtol=0, atol=0)
        torch.testing.assert_close(backbone.embed(x), backbone.embedding(expected), rtol=0, atol=0)
        # the CLS token: pre-logits is token 0 of the normed features
        torch.testing.assert_close(expected, reference.forward_features(x)[:, 0])


def test_timm_preprocessing_fills_the_data_keys_and_a_contradiction_warns(caplog):
    cfg = load_config(None, ["model.backbone", "timm/vit_small_patch16_224", "model.pooling", "model",
                             "model.pretrained", "none"])
    own = timm.get_pretrained_cfg("vit_small_patch16_224")
    assert list(cfg.data.mean) == list(own.mean) and cfg.data.image_size == own.input_size[-1]
    assert "interpolation=bicubic" in repr(build_transforms(cfg, False))
    with caplog.at_level(logging.WARNING, logger="ibc_geo"):
        load_config(None, ["model.backbone", "timm/vit_small_patch16_224", "model.pooling", "model",
                           "model.pretrained", "hub", "data.mean", "[0.485,0.456,0.406]"])
    assert "data.mean [0.485, 0.456, 0.406] differs" in caplog.text and str(list(own.mean)) in caplog.text
    small = load_config(None, ["model.backbone", "timm/vit_tiny_patch16_224", "model.backbone_kwargs",
                               "{img_size: 64, patch_size: 8}", "model.pretrained", "none"])
    assert small.data.image_size == 64


def test_unknown_timm_name_gives_the_closest_names():
    with pytest.raises(ConfigError, match="closest: timm/vit_small_patch16_224"):
        load_config(None, ["model.backbone", "timm/vit_smal_patch16_224"])
    with pytest.raises(ConfigError, match="did you mean 'resnet50'"):
        load_config(None, ["model.backbone", "resnet5"])


def test_local_timm_checkpoint_loads_and_a_misfit_names_its_keys(tmp_path):
    from safetensors.torch import save_file

    torch.manual_seed(1)
    source = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=7, **TINY_VIT)
    path = tmp_path / "vit.safetensors"
    save_file({k: v.contiguous() for k, v in source.state_dict().items()}, str(path))  # with its head, as timm's files
    backbone = EmbeddingBackbone("timm/vit_tiny_patch16_224", 3, 16, pooling="model", pretrained=str(path),
                                 backbone_kwargs=TINY_VIT)
    for key, value in backbone.trunk.state_dict().items():
        assert torch.equal(value, source.state_dict()[key]), key
    torch.save(source.state_dict(), tmp_path / "vit.pth")
    EmbeddingBackbone("timm/vit_tiny_patch16_224", 3, 16, pooling="model", pretrained=str(tmp_path / "vit.pth"),
                      backbone_kwargs=TINY_VIT)
    deeper = dict(TINY_VIT, depth=3)
    with pytest.raises(PretrainedWeightsError, match="missing keys.*blocks.2"):
        EmbeddingBackbone("timm/vit_tiny_patch16_224", 3, 16, pooling="model", pretrained=str(path),
                          backbone_kwargs=deeper)


def test_hub_offline_says_which_file_to_fetch(monkeypatch):
    def offline(*args, **kwargs):
        if kwargs.get("pretrained"):
            raise OSError("no network")
        return real(*args, **kwargs)

    real = timm.create_model
    monkeypatch.setattr(timm, "create_model", offline)
    with pytest.raises(PretrainedWeightsError, match="huggingface.co/timm/vit_tiny_patch16_224.*model.pretrained /path"):
        EmbeddingBackbone("timm/vit_tiny_patch16_224", 3, 16, pooling="model", pretrained="hub",
                          backbone_kwargs=TINY_VIT)


def test_resnet_refuses_timm_only_keys():
    with pytest.raises(ConfigError, match="model.pooling model is for timm backbones"):
        load_config(None, ["model.backbone", "resnet18", "model.pooling", "model"])
    with pytest.raises(ConfigError, match="model.backbone_kwargs"):
        load_config(None, ["model.backbone", "resnet18", "model.backbone_kwargs", "{depth: 2}"])
    assert backbone_entry("resnet50").preprocessing({}).image_size == 227


def test_without_timm_the_message_names_the_install(monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "timm", None)  # import timm -> ImportError
    with pytest.raises(ConfigError, match=r'pip install -e "\.\[timm\]"'):
        load_config(None, ["model.backbone", "timm/vit_small_patch16_224"])
