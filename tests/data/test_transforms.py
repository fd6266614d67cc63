import numpy as np
import pytest
import torch
from PIL import Image

from effnet.data.transforms import MixupCutmix, eval_transforms, smooth_one_hot, train_transforms
from effnet.registry import Preprocessing, get_entry

B0 = get_entry("efficientnet_b0").preprocessing
LITE = Preprocessing(resolution=224, crop_pct=0.875, interpolation="bicubic", mean=(0.5,) * 3, std=(0.5,) * 3)


def gradient_image(width: int = 300, height: int = 200) -> Image.Image:
    x = np.linspace(0, 255, width)[None, :, None]
    y = np.linspace(0, 255, height)[:, None, None]
    return Image.fromarray(np.concatenate([x + 0 * y, y + 0 * x, (x + y) / 2], axis=2).astype(np.uint8))


def test_eval_of_a_constant_image_is_normalized_value():
    image = Image.new("RGB", (97, 61), (10, 128, 250))
    out = eval_transforms(B0)(image)
    assert type(out) is torch.Tensor and out.dtype == torch.float32 and out.shape == (3, 224, 224)
    expected = (torch.tensor([10, 128, 250]) / 255 - torch.tensor(B0.mean)) / torch.tensor(B0.std)
    assert torch.allclose(out, expected.view(3, 1, 1).expand_as(out), atol=1e-6)
    lite = eval_transforms(LITE)(image)
    assert torch.allclose(lite[:, 0, 0], torch.tensor([10, 128, 250]) / 127.5 - 1, atol=1e-6)


@pytest.mark.parametrize("resolution, resize", [(None, 256), (160, 182), (300, 342)])
def test_eval_resizes_short_side_to_res_over_crop_pct_then_center_crops(resolution, resize):
    image = gradient_image()
    out = eval_transforms(B0, resolution)(image)
    res = resolution or 224
    reference = image.resize((resize * 3 // 2, resize), Image.Resampling.BICUBIC)
    left, top = round((reference.width - res) / 2), round((reference.height - res) / 2)  # as torchvision
    reference = np.asarray(reference.crop((left, top, left + res, top + res)), dtype=np.float32) / 255
    expected = (torch.from_numpy(reference).permute(2, 0, 1) - torch.tensor(B0.mean).view(3, 1, 1)) / torch.tensor(
        B0.std).view(3, 1, 1)
    assert out.shape == (3, res, res)
    assert torch.allclose(out, expected, atol=1e-5)


@pytest.mark.parametrize("auto_augment", [None, "autoaugment", "randaugment", "trivialaugment"])
def test_train_preset_shape_dtype_and_range(auto_augment):
    transform = train_transforms(B0, 96, auto_augment=auto_augment, re_prob=0.5)
    outs = torch.stack([transform(gradient_image()) for _ in range(4)])
    assert type(outs) is torch.Tensor and outs.dtype == torch.float32 and outs.shape == (4, 3, 96, 96)
    low = (0 - torch.tensor(B0.mean)) / torch.tensor(B0.std)
    high = (1 - torch.tensor(B0.mean)) / torch.tensor(B0.std)
    assert (outs.amin(dim=(0, 2, 3)) >= low - 1e-5).all() and (outs.amax(dim=(0, 2, 3)) <= high + 1e-5).all()
    assert not torch.equal(outs[0], outs[1])  # random crops differ


def test_train_preset_without_augmentation_is_a_normalized_crop():
    transform = train_transforms(B0, 64, scale=(1.0, 1.0), ratio=(1.0, 1.0), hflip=0.0, color_jitter=None)
    out = transform(Image.new("RGB", (80, 80), (255, 0, 0)))
    expected = (torch.tensor([1.0, 0, 0]) - torch.tensor(B0.mean)) / torch.tensor(B0.std)
    assert torch.allclose(out, expected.view(3, 1, 1).expand(3, 64, 64), atol=1e-6)
    erased = train_transforms(B0, 64, hflip=0.0, color_jitter=None, re_prob=1.0)(Image.new("RGB", (64, 64), (255,) * 3))
    assert (erased == 0).all(dim=0).any()  # the erased box holds the mean colour (0 after normalizing)


BLACK = tuple((0 - m) / s for m, s in zip(B0.mean, B0.std, strict=True))


@pytest.mark.parametrize("fill, corner", [(None, (0.0, 0.0, 0.0)), (0, BLACK)])
def test_train_preset_rotation_and_shear_fill_uncovered_corners(fill, corner):
    transform = train_transforms(B0, 64, scale=(1.0, 1.0), ratio=(1.0, 1.0), hflip=0.0, color_jitter=None,
                                 degrees=30, shear=20, fill=fill)
    white = (torch.ones(3) - torch.tensor(B0.mean)) / torch.tensor(B0.std)
    torch.manual_seed(0)
    outs = torch.stack([transform(Image.new("RGB", (64, 64), (255,) * 3)) for _ in range(8)])
    assert torch.allclose(outs[:, :, 32, 32], white.expand(8, 3), atol=1e-5)  # the center stays covered
    corners = outs[:, :, [0, 0, -1, -1], [0, -1, 0, -1]].permute(0, 2, 1).reshape(-1, 3)
    filled = torch.isclose(corners, torch.tensor(corner).expand_as(corners), atol=0.01).all(dim=1)  # 8-bit fill
    assert filled.float().mean() > 0.5  # turned or sheared: most corners come from outside the image
    assert not torch.equal(outs[0], outs[1])


def test_train_preset_bad_options_are_refused():
    with pytest.raises(ValueError, match="unknown auto_augment 'augmix'"):
        train_transforms(B0, auto_augment="augmix")
    with pytest.raises(ValueError, match="ra_magnitude 15 is outside the scale 0..10"):
        train_transforms(B0, auto_augment="randaugment", ra_magnitude=15)
    train_transforms(B0, auto_augment="randaugment", ra_magnitude=15, ra_num_bins=31)
    with pytest.raises(ValueError, match="fill 300 is not a grey level"):
        train_transforms(B0, degrees=10, fill=300)
    with pytest.raises(ValueError, match=r"degrees -5 and shear 0.0 are ranges \(\+-\); give 0 or more"):
        train_transforms(B0, degrees=-5)


def test_label_smoothing_targets():
    soft = smooth_one_hot(torch.tensor([2, 0]), 5, 0.1)
    assert torch.allclose(soft[0], torch.tensor([0.02, 0.02, 0.92, 0.02, 0.02]))
    assert torch.allclose(soft.sum(1), torch.ones(2))
    images = torch.randn(2, 3, 8, 8)
    out_images, targets = MixupCutmix(5, label_smoothing=0.1)(images, torch.tensor([2, 0]))
    assert out_images is images and torch.allclose(targets, soft)


def test_mixup_blends_images_and_targets_with_the_same_lambda():
    images = torch.arange(4.0).view(4, 1, 1, 1).expand(4, 3, 4, 4)
    labels = torch.tensor([0, 1, 2, 3])
    mixed, targets = MixupCutmix(4, mixup_alpha=0.4, label_smoothing=0.2)(images, labels)
    lam = (targets[0, 0] - 0.05) / 0.8
    assert torch.allclose(mixed[0], lam * images[0] + (1 - lam) * images[3], atol=1e-6)
    assert torch.allclose(targets.sum(1), torch.ones(4))
    assert torch.allclose(targets[0, 3], (1 - lam) * 0.8 + 0.05, atol=1e-6)


def test_cutmix_target_weights_equal_pasted_area():
    torch.manual_seed(1)
    mixer = MixupCutmix(8, cutmix_alpha=1.0, label_smoothing=0.0)
    images = torch.arange(8.0).view(8, 1, 1, 1).expand(8, 3, 32, 32).contiguous()
    labels = torch.arange(8)
    pasted_any = False
    for _ in range(5):
        mixed, targets = mixer(images, labels)
        for i in range(8):
            partner = (i - 1) % 8
            fraction = (mixed[i, 0] == partner).float().mean().item()
            assert targets[i, partner].item() == pytest.approx(fraction, abs=1e-6)
            assert targets[i, i].item() == pytest.approx(1 - fraction, abs=1e-6)
            pasted_any |= fraction > 0
    assert pasted_any
    assert torch.equal(images[:, 0, 0, 0], torch.arange(8.0))  # input untouched


def test_mixup_cutmix_switch_and_prob():
    labels = torch.tensor([0, 1])
    images = torch.stack([torch.zeros(3, 16, 16), torch.ones(3, 16, 16)])
    never = MixupCutmix(2, mixup_alpha=1.0, cutmix_alpha=1.0, prob=0.0)
    assert not never.enabled and torch.equal(never(images, labels)[1], torch.eye(2))
    cutmix_only = MixupCutmix(2, mixup_alpha=1.0, cutmix_alpha=1.0, switch_prob=1.0)
    for _ in range(5):
        mixed, _ = cutmix_only(images, labels)
        assert set(mixed.unique().tolist()) <= {0.0, 1.0}  # pasted, never blended
    with pytest.raises(ValueError, match="invalid mixup/cutmix"):
        MixupCutmix(2, mixup_alpha=-1)
