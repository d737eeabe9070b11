"""Transforms of METHOD.md §1.7 at a configurable size; grayscale becomes 3 channels."""
import pytest
import torch
from PIL import Image
from torchvision import transforms as T

from ibc_geo.data import build_transforms, eval_transforms, fixtures
from ibc_geo.data.transforms import default_resize_size


@pytest.mark.parametrize("mode", ["RGB", "L", "P", "RGBA"])
@pytest.mark.parametrize("train", [True, False])
def test_shape_and_channels(mode, train):
    cfg = fixtures.fixture_config("digits", "", "data.image_size", 24)
    image = Image.new(mode, (40, 30))
    out = build_transforms(cfg, train)(image)
    assert out.shape == (3, 24, 24) and out.dtype == torch.float32


def test_pipeline_steps():
    cfg = fixtures.fixture_config("digits", "", "data.image_size", 227, "data.random_erasing", 0.25)
    train = [type(t).__name__ for t in build_transforms(cfg, True).transforms]
    assert train == ["ToRGB", "RandomResizedCrop", "RandomHorizontalFlip", "ToTensor", "Normalize", "RandomErasing"]
    assert build_transforms(cfg, True).transforms[-1].p == 0.25
    test = build_transforms(cfg, False).transforms
    assert [type(t).__name__ for t in test] == ["ToRGB", "Resize", "CenterCrop", "ToTensor", "Normalize"]
    assert test[1].size == 256 and test[2].size == (227, 227)
    no_erasing = fixtures.fixture_config("digits", "", "data.random_erasing", 0)
    assert not any(isinstance(t, T.RandomErasing) for t in build_transforms(no_erasing, True).transforms)


def test_resize_size():
    assert default_resize_size(227) == 256 and default_resize_size(32) == 36
    cfg = fixtures.fixture_config("digits", "", "data.image_size", 32, "data.resize_size", 40)
    assert build_transforms(cfg, False).transforms[1].size == 40
    with pytest.raises(ValueError, match="resize_size"):
        eval_transforms(32, 20)


def test_eval_deterministic_and_normalised():
    image = Image.new("RGB", (50, 50), (124, 116, 104))  # the ImageNet mean colour
    out = eval_transforms(16)(image)
    assert torch.equal(out, eval_transforms(16)(image)) and out.abs().max() < 0.01
