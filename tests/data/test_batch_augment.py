"""The batched training preset (effnet.data.batch_augment, with batch_ops and batch_policies)
against torchvision's v2 preset and functionals, image by image: each op at a fixed magnitude,
the random distributions, the policy tables, and the output the device path hands to the model."""

from __future__ import annotations

import math

import pytest
import torch
from torchvision.transforms import InterpolationMode, v2
from torchvision.transforms.v2 import functional as TF

from effnet.data import batch_augment as ba
from effnet.data import batch_ops
from effnet.data import batch_policies as policies
from effnet.data.transforms import eval_transforms, train_transforms
from effnet.description import Preprocessing

SIZE = 40
FILL = [124, 116, 104]
PREPROCESSING = Preprocessing(resolution=SIZE, crop_pct=0.875, interpolation="bicubic")


def _photos(count: int = 6, size: int = SIZE, seed: int = 0) -> torch.Tensor:
    """Smooth colourful uint8 pictures with some texture, ``(count, 3, size, size)``."""
    generator = torch.Generator().manual_seed(seed)
    y, x = torch.meshgrid(torch.arange(size, dtype=torch.float32), torch.arange(size, dtype=torch.float32),
                          indexing="ij")
    pictures = []
    for index in range(count):
        phase = torch.rand(3, generator=generator) * 6
        low = 30 + 40 * index % 90
        planes = [low + (150 - 10 * index) * (0.5 + 0.5 * torch.sin(x / (5 + c + index) + y / (7 - c) + phase[c]))
                  for c in range(3)]
        noise = torch.randint(0, 12, (3, size, size), generator=generator)
        pictures.append(torch.stack(planes) + noise)
    return torch.stack(pictures).round().clamp(0, 255).to(torch.uint8)


def _each(function, images: torch.Tensor, values) -> torch.Tensor:
    return torch.stack([function(image, value) for image, value in zip(images, values, strict=True)]).float()


# ------------------------------------------------------------- colour ops
@pytest.mark.parametrize(("name", "ours", "theirs", "values", "tolerance"), [
    ("brightness", batch_ops.adjust_brightness, TF.adjust_brightness, [0.1, 0.6, 1.0, 1.3, 1.9, 0.99], 1),
    ("saturation", batch_ops.adjust_saturation, TF.adjust_saturation, [0.1, 0.6, 1.0, 1.3, 1.9, 0.01], 1),
    ("contrast", batch_ops.adjust_contrast, TF.adjust_contrast, [0.1, 0.6, 1.0, 1.3, 1.9, 0.01], 1),
    ("sharpness", batch_ops.adjust_sharpness, TF.adjust_sharpness, [0.1, 0.6, 1.0, 1.3, 1.9, 0.01], 1),
    ("posterize", batch_ops.posterize, lambda image, bits: TF.posterize(image, int(bits)), [8, 7, 6, 4, 2, 0], 0),
    ("solarize", batch_ops.solarize, TF.solarize, [255, 204, 128, 70, 0, 230], 0),
])
def test_a_colour_op_with_per_sample_values_matches_torchvision_on_each_image(name, ours, theirs, values,
                                                                              tolerance) -> None:
    images = _photos()
    batch = ours(images.float(), torch.tensor(values, dtype=torch.float32))
    expected = _each(theirs, images, values)
    assert (batch - expected).abs().max() <= tolerance, name
    assert (batch != expected).float().mean() < 0.03  # off by one level at most (float rounding), and rarely
    assert torch.equal(batch, batch.round()) and batch.min() >= 0 and batch.max() <= 255


@pytest.mark.parametrize(("ours", "theirs"), [(batch_ops.autocontrast, TF.autocontrast),
                                              (batch_ops.equalize, TF.equalize), (batch_ops.invert, TF.invert)])
def test_the_parameterless_colour_ops_match_torchvision_exactly(ours, theirs) -> None:
    images = _photos()
    images[2] = 77  # a flat picture: autocontrast and equalize leave it
    images[3, 1] = images[3, 1] // 4 + 100  # a narrow channel
    batch = ours(images.float())
    assert torch.equal(batch, torch.stack([theirs(image) for image in images]).float())


def test_the_policy_steps_apply_each_samples_own_op() -> None:
    images = _photos(count=10).float()
    ops = torch.tensor([policies.BRIGHTNESS, policies.COLOR, policies.CONTRAST, policies.SHARPNESS, policies.POSTERIZE,
                        policies.SOLARIZE, policies.AUTOCONTRAST, policies.EQUALIZE, policies.INVERT, policies.ROTATE])
    magnitudes = torch.tensor([0.5, -0.5, 0.3, 0.9, 5, 128, 0, 0, 0, 30.0])
    out = batch_ops.apply_subsets(images.clone(), ops, torch.argsort(ops, stable=True),
                                  policies.policy_colour_ops(magnitudes))
    uint8 = images.to(torch.uint8)
    expected = [TF.adjust_brightness(uint8[0], 1.5), TF.adjust_saturation(uint8[1], 0.5),
                TF.adjust_contrast(uint8[2], 1.3), TF.adjust_sharpness(uint8[3], 1.9), TF.posterize(uint8[4], 5),
                TF.solarize(uint8[5], 128), TF.autocontrast(uint8[6]), TF.equalize(uint8[7]), TF.invert(uint8[8]),
                uint8[9]]  # geometric: done by the warp, not here
    assert (out - torch.stack(expected).float()).abs().max() <= 1


# ------------------------------------------------------------ geometric ops
def _warp(images: torch.Tensor, matrices: torch.Tensor) -> torch.Tensor:
    return batch_ops.warp(images.float(), matrices, torch.tensor(FILL, dtype=torch.float32)).round()


def _away_from_the_edge_of_the_fill(expected: list[torch.Tensor]) -> torch.Tensor:
    """Pixels where torchvision's fill mask is 0 or 1 (it blends the fill differently at the
    edge): the same transform of a white picture on black, exactly 0 or 255."""
    masks = torch.stack([function(torch.full((1, SIZE, SIZE), 255, dtype=torch.uint8)) for function in expected])
    return (masks == 0) | (masks == 255)


def _geometric_case(op: int, magnitudes: list[float]):
    bilinear = InterpolationMode.BILINEAR

    def function(magnitude: float):
        if op == policies.ROTATE:
            return lambda image: TF.rotate(image, magnitude, interpolation=bilinear, fill=FILL[:image.shape[0]])
        shear = math.degrees(math.atan(magnitude))
        translate, shears, center = [0, 0], [0.0, 0.0], None
        if op in (policies.SHEAR_X, policies.SHEAR_Y):
            shears[op == policies.SHEAR_Y] = shear
            center = [0, 0]
        else:
            translate[op == policies.TRANSLATE_Y] = int(magnitude)
        return lambda image: TF.affine(image, angle=0.0, translate=translate, scale=1.0, shear=shears,
                                       interpolation=bilinear, fill=FILL[:image.shape[0]], center=center)

    return [function(m) for m in magnitudes]


@pytest.mark.parametrize(("op", "magnitudes"), [
    (policies.ROTATE, [20.0, -13.0, 30.0, -135.0, 0.0, 90.0]),
    (policies.SHEAR_X, [0.3, -0.2, 0.99, -0.99, 0.0, 0.1]),
    (policies.SHEAR_Y, [0.3, -0.2, 0.99, -0.99, 0.0, 0.1]),
    (policies.TRANSLATE_X, [5.0, -7.0, 18.0, -32.0, 0.0, 1.0]),
    (policies.TRANSLATE_Y, [5.0, -7.0, 18.0, -32.0, 0.0, 1.0]),
])
def test_a_geometric_policy_op_matches_torchvision_on_each_image(op, magnitudes) -> None:
    images = _photos()
    matrices = policies.policy_matrices(torch.full((6,), op), torch.tensor(magnitudes), SIZE)
    batch = _warp(images, matrices)
    functions = _geometric_case(op, magnitudes)
    expected = torch.stack([function(image) for function, image in zip(functions, images, strict=True)]).float()
    settled = _away_from_the_edge_of_the_fill(functions).expand_as(batch)
    assert settled.float().mean() > 0.5
    assert (batch - expected)[settled].abs().max() <= 2
    assert (batch - expected)[settled].abs().mean() < 0.1


def test_the_random_affine_matrix_matches_torchvision() -> None:
    images = _photos()
    angles, shears = [12.0, -7.0, 0.0, 25.0, -30.0, 3.0], [9.0, -5.0, 0.0, 0.0, 10.0, -10.0]
    matrices = batch_ops.affine_matrices(torch.tensor(angles), torch.tan(torch.deg2rad(torch.tensor(shears))),
                                  torch.zeros(6), torch.zeros(6, 2), torch.zeros(6, dtype=torch.bool), SIZE)
    functions = [lambda image, a=a, s=s: TF.affine(image, angle=a, translate=[0, 0], scale=1.0, shear=[s, 0.0],
                                                   interpolation=InterpolationMode.BILINEAR,
                                                   fill=FILL[:image.shape[0]])
                 for a, s in zip(angles, shears, strict=True)]
    expected = torch.stack([function(image) for function, image in zip(functions, images, strict=True)]).float()
    settled = _away_from_the_edge_of_the_fill(functions).expand_as(expected)
    assert ((_warp(images, matrices) - expected)[settled]).abs().max() <= 2
    assert torch.equal(_warp(images, torch.eye(3).repeat(6, 1, 1)), images.float())


def test_the_crop_resize_is_torchvisions_resized_crop() -> None:
    images = [TF.resize(image, [61 + 9 * i, 83 - 5 * i], antialias=True) for i, image in enumerate(_photos(4))]
    boxes = [[3, 5, 50, 60], [0, 0, 70, 78], [10, 2, 20, 30], [1, 9, 60, 40]]
    for mode in ("bilinear", "bicubic"):
        batch = batch_ops.crop_resize(images, boxes, 32, mode).round().clamp(0, 255)
        expected = torch.stack([TF.resized_crop(image, *box, [32, 32], interpolation=InterpolationMode(mode),
                                                antialias=True) for image, box in zip(images, boxes, strict=True)])
        assert (batch - expected.float()).abs().max() <= 1


# ------------------------------------------------------------ distributions
def test_crop_boxes_obey_scale_and_ratio_and_follow_torchvisions_distribution() -> None:
    count, scale, ratio = 10_000, (0.08, 1.0), (3 / 4, 4 / 3)
    heights, widths = torch.full((count,), 300), torch.full((count,), 400)
    boxes = batch_ops.crop_boxes(heights, widths, scale, ratio, torch.Generator().manual_seed(0))
    top, left, height, width = boxes.unbind(1)
    assert (top >= 0).all() and (left >= 0).all() and (top + height <= 300).all() and (left + width <= 400).all()
    fraction = height * width / (300 * 400)
    slack = 0.02  # the sides are rounded to whole pixels
    assert fraction.min() >= scale[0] - slack and fraction.max() <= scale[1]
    aspect = width / height
    assert aspect.min() >= ratio[0] - slack and aspect.max() <= ratio[1] + slack
    torch.manual_seed(0)
    crop = v2.RandomResizedCrop(SIZE, scale=scale, ratio=ratio)
    image = torch.zeros(3, 300, 400, dtype=torch.uint8)
    theirs = torch.tensor([[p["height"] * p["width"] / (300 * 400), p["width"] / p["height"]]
                           for p in (crop.make_params([image]) for _ in range(count))])
    for ours_values, their_values in ((fraction, theirs[:, 0]), (aspect, theirs[:, 1])):
        grid = torch.linspace(0.1, 1.3, 50)
        ours_cdf = (ours_values[None, :] <= grid[:, None]).float().mean(1)
        their_cdf = (their_values[None, :] <= grid[:, None]).float().mean(1)
        assert (ours_cdf - their_cdf).abs().max() < 0.03  # two-sample KS at 10k draws each
    # uniform in scale where every draw fits: square crops of a square picture
    side = torch.full((count,), 1000)
    square = batch_ops.crop_boxes(side, side, scale, (1.0, 1.0), torch.Generator().manual_seed(1))
    fraction = square[:, 2] * square[:, 3] / 1000**2
    deciles = torch.quantile(fraction, torch.linspace(0.1, 0.9, 9))
    assert torch.allclose(deciles, 0.08 + 0.92 * torch.linspace(0.1, 0.9, 9), atol=0.015)


def test_crop_boxes_fall_back_to_the_central_crop_at_the_nearest_ratio() -> None:
    boxes = batch_ops.crop_boxes(torch.tensor([10, 400]), torch.tensor([400, 10]), (0.9, 1.0), (3 / 4, 4 / 3),
                          torch.Generator().manual_seed(0))
    assert boxes.tolist() == [[0.0, 193.0, 10.0, 13.0], [193.0, 0.0, 13.0, 10.0]]


def test_policy_tables_are_torchvisions() -> None:
    for wide, reference in ((False, v2.RandAugment), (True, v2.TrivialAugmentWide)):
        table = policies.magnitude_table(wide, 31, SIZE)
        for name, (magnitudes, signed) in reference._AUGMENTATION_SPACE.items():
            op = policies.OP_NAMES.index(name)
            assert (op in policies.SIGNED_OPS) == signed, name
            expected = magnitudes(31, SIZE, SIZE)
            if name == "Solarize":
                expected = (expected.double() * 255).ceil()
            if expected is not None:
                torch.testing.assert_close(table[op], expected.float(), msg=name)
        assert [policies.OP_NAMES[op] for op in policies.WIDE_OPS] == list(reference._AUGMENTATION_SPACE)
    policy = v2.AutoAugment(v2.AutoAugmentPolicy.IMAGENET)._policies
    assert [[(policies.OP_NAMES[op], p, m) for op, p, m in pair] for pair in policies.IMAGENET_POLICY] == \
        [[(name, p, m or 0) for name, p, m in pair] for name_pair in [policy] for pair in name_pair]


def _chi_square(counts: torch.Tensor, probabilities: torch.Tensor) -> float:
    expected = probabilities * counts.sum()
    return float(((counts - expected) ** 2 / expected).sum())


def test_randaugment_draws_num_ops_ops_per_image_each_op_equally_often() -> None:
    count = 14_000
    ops, magnitudes = policies.Policy("randaugment", 3, 9, 11).draw(count, 224, torch.Generator().manual_seed(0))
    assert ops.shape == magnitudes.shape == (count, 3)
    frequencies = torch.bincount(ops.reshape(-1), minlength=15)
    assert frequencies[policies.INVERT] == 0
    # 13 degrees of freedom: the 99.9% quantile of chi-square is 34.5
    assert _chi_square(frequencies[list(policies.WIDE_OPS)].float(), torch.full((14,), 1 / 14)) < 34.5
    table = policies.magnitude_table(False, 11, 224)
    signed = torch.isin(ops, torch.tensor(policies.SIGNED_OPS))
    expected = table[ops, 9]
    translate = (ops == policies.TRANSLATE_X) | (ops == policies.TRANSLATE_Y)
    expected = torch.where(translate, expected.trunc(), expected)
    assert torch.equal(magnitudes.abs(), expected)
    negative = (magnitudes < 0)[signed].float().mean()
    assert abs(negative - 0.5) < 0.02 and not (magnitudes < 0)[~signed].any()


def test_trivialaugment_and_autoaugment_draw_their_policies() -> None:
    generator = torch.Generator().manual_seed(0)
    ops, magnitudes = policies.Policy("trivialaugment", 1, 0, 31).draw(14_000, 224, generator)
    assert ops.shape == (14_000, 1)
    assert _chi_square(torch.bincount(ops[:, 0], minlength=14)[:14].float(), torch.full((14,), 1 / 14)) < 34.5
    rotations = magnitudes[ops == policies.ROTATE].abs()
    assert rotations.max() == 135.0 and len(rotations.unique()) == 31  # the magnitude bin is drawn too
    ops, _ = policies.Policy("autoaugment", 2).draw(20_000, 224, generator)
    # Equalize: expected count from the 25 pairs' probabilities
    expected = sum(p for pair in policies.IMAGENET_POLICY for op, p, _ in pair if op == policies.EQUALIZE) / 25
    assert abs((ops == policies.EQUALIZE).sum(1).float().mean() - expected) < 0.03
    assert not torch.isin(ops, torch.tensor([policies.TRANSLATE_X, policies.SHEAR_Y])).any()


# ------------------------------------------------------------------ presets
def _train_preset(**options) -> tuple:
    transform = train_transforms(PREPROCESSING, for_tensors=True, **options)
    return transform, ba.batch_preset(transform)


def test_the_batched_preset_reads_the_v2_presets_settings() -> None:
    _, preset = _train_preset(auto_augment="randaugment", ra_magnitude=7, ra_num_ops=3, degrees=10, shear=5,
                              re_prob=0.25, scale=(0.3, 1.0), fill=0)
    assert isinstance(preset, ba.BatchTrainPreset)
    assert (preset.size, preset.scale, preset.mode, preset.degrees, preset.shear, preset.hflip) == \
        (SIZE, (0.3, 1.0), "bicubic", 10.0, 5.0, 0.5)
    assert preset.policy == policies.Policy("randaugment", 3, 7, 11) and preset.fill == (0.0, 0.0, 0.0)
    assert preset.brightness == pytest.approx((0.6, 1.4)) and preset.erase_prob == 0.25
    assert isinstance(ba.batch_preset(eval_transforms(PREPROCESSING)), ba.BatchEvalPreset)
    assert ba.batch_preset(v2.Compose([v2.RandomResizedCrop(8), v2.GaussianBlur(3), v2.ToDtype(torch.float32),
                                       v2.Normalize([0.5] * 3, [0.5] * 3)])) is None
    nearest = Preprocessing(resolution=SIZE, crop_pct=0.875, interpolation="nearest")
    assert ba.batch_preset(train_transforms(nearest, auto_augment="trivialaugment", for_tensors=True)) is None


@pytest.mark.parametrize("policy", [None, "randaugment", "trivialaugment", "autoaugment"])
def test_the_batched_preset_output_and_its_statistics_match_the_per_image_preset(policy) -> None:
    images = [TF.resize(image, [50 + 4 * (i % 7), 70 - 3 * (i % 5)], antialias=True)
              for i, image in enumerate(_photos(48, size=64, seed=1))] * 2
    transform, preset = _train_preset(auto_augment=policy, re_prob=0.3, degrees=10)
    batch = preset(images, torch.Generator().manual_seed(0))
    assert batch.shape == (96, 3, SIZE, SIZE) and batch.dtype == torch.float32
    assert batch.is_contiguous(memory_format=torch.channels_last) and torch.isfinite(batch).all()
    torch.manual_seed(0)
    reference = torch.stack([transform(image) for image in images * 2])
    assert abs(batch.mean() - reference.mean()) < 0.15
    assert abs(batch.std() - reference.std()) < 0.15
    erased = (batch == 0).all(dim=1).flatten(1).any(dim=1).float().mean()
    assert 0.1 < erased < 0.5


def test_the_preset_flips_then_warps_with_the_drawn_matrix() -> None:
    images = list(_photos())
    _, preset = _train_preset(color_jitter=None, hflip=1.0, degrees=30, scale=(1.0, 1.0), ratio=(1.0, 1.0))
    side = torch.full((6,), SIZE)
    _, labels, values = preset.draw(side, side, torch.Generator().manual_seed(0))
    assert labels["flip"].all() and labels["warp"].all()
    inverse = values["matrix"]
    angles = torch.rad2deg(torch.atan2(inverse[:, 0, 1], inverse[:, 0, 0])).tolist()
    assert len({round(a) for a in angles}) > 2 and max(abs(a) for a in angles) <= 30
    functions = [lambda image, a=a: TF.affine(
        TF.horizontal_flip(image), angle=a, translate=[0, 0], scale=1.0, shear=[0.0, 0.0],
        interpolation=InterpolationMode.BILINEAR, fill=FILL[:image.shape[0]]) for a in angles]
    expected = torch.stack([function(image) for function, image in zip(functions, images, strict=True)]).float()
    batch = preset(images, torch.Generator().manual_seed(0))  # the crop is the whole picture, at its size
    std, mean = (torch.tensor(v).view(1, 3, 1, 1) for v in (PREPROCESSING.std, PREPROCESSING.mean))
    settled = _away_from_the_edge_of_the_fill(functions).expand_as(expected)
    assert ((batch * std + mean) * 255 - expected)[settled].abs().max() <= 2.01


def test_colour_jitter_applies_each_samples_factors_in_its_order() -> None:
    images = list(_photos(12))
    _, preset = _train_preset(color_jitter=0.4, hflip=0.0, scale=(1.0, 1.0), ratio=(1.0, 1.0))
    side = torch.full((12,), SIZE)
    _, labels, values = preset.draw(side, side, torch.Generator().manual_seed(0))
    orders = [(int(k) // 9, int(k) // 3 % 3, int(k) % 3) for k in labels["jitter"]]
    assert len(set(orders)) > 3 and all(sorted(order) == [0, 1, 2] for order in orders)
    functions = (TF.adjust_brightness, TF.adjust_contrast, TF.adjust_saturation)
    expected = []
    for image, order, factors in zip(images, orders, values["jitter"].tolist(), strict=True):
        assert all(0.6 <= f <= 1.4 for f in factors)
        for op in order:
            image = functions[op](image, factors[op])
        expected.append(image)
    batch = preset(images, torch.Generator().manual_seed(0))
    std, mean = (torch.tensor(v).view(1, 3, 1, 1) for v in (PREPROCESSING.std, PREPROCESSING.mean))
    assert ((batch * std + mean) * 255 - torch.stack(expected).float()).abs().max() <= 1.01


def test_the_batched_preset_is_deterministic_given_the_generator() -> None:
    images = list(_photos(8, size=56))
    _, preset = _train_preset(auto_augment="randaugment", re_prob=0.5, degrees=10)
    first = preset(images, torch.Generator().manual_seed(3))
    assert torch.equal(first, preset(images, torch.Generator().manual_seed(3)))
    assert not torch.equal(first, preset(images, torch.Generator().manual_seed(4)))


def test_the_batched_evaluation_preset_is_the_per_image_one() -> None:
    images = [TF.resize(image, [50 + 3 * i, 60 - 2 * i], antialias=True) for i, image in enumerate(_photos())]
    transform = eval_transforms(PREPROCESSING)
    batch = ba.batch_preset(transform)(images, torch.Generator())
    torch.testing.assert_close(batch, torch.stack([transform(image) for image in images]), atol=1e-5, rtol=0)


def test_erasing_boxes_obey_their_bounds() -> None:
    boxes = batch_ops.erase_boxes(10_000, SIZE, (0.02, 0.33), (0.3, 3.3), 0.4, torch.Generator().manual_seed(0))
    top, left, height, width = boxes.unbind(1)
    erased = height > 0
    assert abs(erased.float().mean() - 0.4) < 0.02
    area = (height * width / SIZE**2)[erased]
    assert area.min() >= 0.015 and area.max() <= 0.35  # sides rounded to whole pixels
    assert ((top + height)[erased] <= SIZE).all() and ((left + width)[erased] <= SIZE).all()
    images = batch_ops.erase(torch.ones(2, 3, 8, 8), torch.tensor([[1.0, 2.0, 3.0, 4.0], [0.0, 0.0, 0.0, 5.0]]))
    assert images[0].eq(0).sum() == 3 * 12 and images[0, :, 1:4, 2:6].eq(0).all() and images[1].eq(1).all()
