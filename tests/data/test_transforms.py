"""Transforms of METHOD.md §1.7 at a configurable size; grayscale becomes 3 channels."""
import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import transforms as T

from ibc_geo.data import build_transforms, eval_transforms
from ibc_geo.testing import fixtures
from ibc_geo.data.transforms import (ERASING_VALUE, IMAGENET_MEAN, IMAGENET_STD, OfficialRandomErasing,
                                     default_resize_size)


@pytest.mark.parametrize("mode", ["RGB", "L", "P", "RGBA"])
@pytest.mark.parametrize("train", [True, False])
def test_shape_and_channels(mode, train):
    cfg = fixtures.fixture_config("digits", "", "data.image_size", 24)
    image = Image.new(mode, (40, 30))
    out = build_transforms(cfg, train)(image)
    assert out.shape == (3, 24, 24) and out.dtype == torch.float32


def test_pipeline_steps_and_parameters():
    cfg = fixtures.fixture_config("digits", "", "data.image_size", 227, "data.random_erasing", 0.25,
                                  "data.mean", "[0.5,0.4,0.3]", "data.std", "[0.2,0.25,0.3]")
    train = build_transforms(cfg, True).transforms
    assert [type(t).__name__ for t in train] == ["ToRGB", "RandomResizedCrop", "RandomHorizontalFlip", "ToTensor",
                                                 "Normalize", "OfficialRandomErasing"]
    erasing = train[-1]
    assert (erasing.p, erasing.area, erasing.value, erasing.attempts) == (0.25, (0.02, 0.4), ERASING_VALUE, 100)
    assert erasing.ratio == pytest.approx((0.3, 1 / 0.3))
    assert ERASING_VALUE == (0.4914, 0.4822, 0.4465)
    assert repr(erasing) == ("OfficialRandomErasing(p=0.25, area=(0.02, 0.4), ratio=(0.3, 3.3333), "
                             "value=(0.4914, 0.4822, 0.4465), attempts=100)")
    test = build_transforms(cfg, False).transforms
    assert [type(t).__name__ for t in test] == ["ToRGB", "Resize", "CenterCrop", "ToTensor", "Normalize"]
    assert test[1].size == 256 and test[2].size == (227, 227)
    for norm in (train[4], test[4]):
        assert tuple(norm.mean) == (0.5, 0.4, 0.3) and tuple(norm.std) == (0.2, 0.25, 0.3)
    # the values reach the pixels: a mid-grey image becomes (0.5 - mean) / std
    out = build_transforms(cfg, False)(Image.new("RGB", (300, 300), (128, 128, 128)))
    expected = (128 / 255 - torch.tensor([0.5, 0.4, 0.3])) / torch.tensor([0.2, 0.25, 0.3])
    assert torch.allclose(out.mean(dim=(1, 2)), expected, atol=1e-5)
    default = fixtures.fixture_config("digits", "")
    for train_flag in (True, False):
        norm = [t for t in build_transforms(default, train_flag).transforms if isinstance(t, T.Normalize)][0]
        assert tuple(norm.mean) == IMAGENET_MEAN == (0.485, 0.456, 0.406)
        assert tuple(norm.std) == IMAGENET_STD == (0.229, 0.224, 0.225)  # not the official typo 0.299
    no_erasing = fixtures.fixture_config("digits", "", "data.random_erasing", 0)
    assert not any(isinstance(t, (T.RandomErasing, OfficialRandomErasing))
                   for t in build_transforms(no_erasing, True).transforms)


CONSTANT = 7.0


def erased_box(before, after):
    """``(top, left, h, w)`` of the erased rectangle (checked to be one, the same in every channel), or None."""
    mask = after != before
    if not mask.any():
        return None
    assert (mask == mask[0]).all()  # every channel erased at the same place
    rows, cols = torch.nonzero(mask[0].any(1)).flatten(), torch.nonzero(mask[0].any(0)).flatten()
    top, left, h, w = int(rows[0]), int(cols[0]), len(rows), len(cols)
    assert rows[-1] - top + 1 == h and cols[-1] - left + 1 == w
    assert mask[0, top:top + h, left:left + w].all() and mask[0].sum() == h * w  # a full rectangle
    return top, left, h, w


def test_random_erasing_box_area_ratio_and_values():
    H, W = 48, 64
    image = torch.full((3, H, W), CONSTANT)
    erase = OfficialRandomErasing(p=1.0)
    values = torch.tensor(ERASING_VALUE, dtype=torch.float32)
    torch.manual_seed(0)
    fractions, ratios, tops, lefts = [], [], [], []
    for _ in range(2000):
        out = erase(image)
        assert torch.equal(image, torch.full((3, H, W), CONSTANT))  # the input left as it is
        top, left, h, w = erased_box(image, out)
        for c in range(3):
            assert torch.equal(out[c, top:top + h, left:left + w], values[c].expand(h, w))  # exact constants
        assert h < H and w < W and top + h <= H and left + w <= W
        # h, w are rounded: the drawn area a and ratio r satisfy |sqrt(a r) - h| <= 0.5, |sqrt(a / r) - w| <= 0.5
        assert (h - 0.5) * (w - 0.5) <= 0.4 * H * W and (h + 0.5) * (w + 0.5) >= 0.02 * H * W
        assert (h - 0.5) / (w + 0.5) <= 1 / 0.3 and (h + 0.5) / (w - 0.5) >= 0.3
        fractions.append(h * w / (H * W))
        ratios.append(h / w)
        tops.append(top)
        lefts.append(left)
    fractions, ratios = np.array(fractions), np.array(ratios)
    assert fractions.min() < 0.03 and fractions.max() > 0.37  # the whole range [0.02, 0.4] is drawn
    assert 0.175 < fractions.mean() < 0.21  # uniform area (0.21; large boxes a little rejected: ~0.19)
    # uniform ratio in [0.3, 3.33]: median ~1.8 (log-uniform, torchvision's, would give 1.0)
    assert 1.5 < np.median(ratios) < 2.1 and ratios.min() < 0.4 and ratios.max() > 2.8
    assert min(tops) == 0 and min(lefts) == 0 and max(tops) > H // 2 and max(lefts) > W // 2


def test_random_erasing_probability_and_seed():
    image = torch.full((3, 32, 32), CONSTANT)
    torch.manual_seed(1)
    assert all(torch.equal(OfficialRandomErasing(p=0.0)(image), image) for _ in range(300))
    torch.manual_seed(1)
    half = OfficialRandomErasing(p=0.5)
    rate = np.mean([erased_box(image, half(image)) is not None for _ in range(3000)])
    assert 0.46 < rate < 0.54
    torch.manual_seed(5)
    a = half(image)
    torch.manual_seed(5)
    assert torch.equal(a, half(image))  # torch's RNG: seeded per sample by the training pipeline
    gray = torch.full((1, 32, 32), CONSTANT)
    out = OfficialRandomErasing(p=1.0)(gray)
    top, left, h, w = erased_box(gray, out)
    assert (out[0, top:top + h, left:left + w] == torch.tensor(0.4914)).all()
    with pytest.raises(ValueError, match="probability"):
        OfficialRandomErasing(p=1.5)


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
