import math

import pytest

from effnet.cli import main
from effnet.errors import ConfigError
from effnet.scaling import CompoundScaling, round_filters, round_repeats
from effnet.variants import VARIANTS, nearest_published


@pytest.mark.parametrize(
    "channels, width, expected",
    [(32, 1.0, 32), (32, 1.1, 32), (32, 1.2, 40), (32, 1.4, 48), (32, 1.8, 56), (32, 2.0, 64),
     (1280, 1.1, 1408), (1280, 1.2, 1536), (1280, 1.4, 1792), (1280, 2.0, 2560),
     (16, 0.25, 8), (24, 1.1, 24), (40, 1.1, 48), (112, 1.4, 160), (320, 1.8, 576)],
)
def test_round_filters_matches_reference_rule(channels, width, expected):
    assert round_filters(channels, width) == expected


def test_round_filters_never_loses_more_than_ten_percent():
    for channels in range(8, 400, 8):
        for width in (0.3, 0.55, 0.8, 1.15, 1.45, 3.3):
            rounded = round_filters(channels, width)
            assert rounded % 8 == 0
            assert rounded >= 0.9 * channels * width


def test_round_repeats_uses_ceil_not_int():
    assert round_repeats(2, 1.1) == 3  # int() would give 2
    assert round_repeats(1, 3.1) == 4
    assert round_repeats(4, 2.6) == 11
    assert round_repeats(3, 1.0) == 3


def test_compound_constraint_and_flops_growth():
    rule = CompoundScaling()
    assert rule.flops_base == pytest.approx(1.2 * 1.1**2 * 1.15**2)
    assert rule.flops_base == pytest.approx(2.0, abs=0.1)
    assert rule.flops_growth(3) == pytest.approx(rule.flops_base**3)
    assert rule.depth(2) == pytest.approx(1.44)
    assert rule.width(2) == pytest.approx(1.21)
    assert rule.resolution(0) == 224
    assert rule.resolution(1) == 256  # 224 * 1.15 = 257.6 -> nearest multiple of 8


def test_coefficients_are_overridable():
    rule = CompoundScaling(alpha=1.3, beta=1.05, gamma=1.2, base_resolution=192)
    assert rule.depth(1) == pytest.approx(1.3)
    assert rule.width(1) == pytest.approx(1.05)
    assert rule.resolution(1) == 232  # 192 * 1.2 = 230.4 -> 232
    assert rule.flops_base == pytest.approx(1.3 * 1.05**2 * 1.2**2)


def test_published_table_is_not_the_formula():
    rule = CompoundScaling()
    b1 = VARIANTS["efficientnet_b1"]
    assert (b1.width, b1.depth, b1.resolution) == (1.0, 1.1, 240)
    assert (rule.width(1), rule.depth(1)) != (b1.width, b1.depth)
    b7 = VARIANTS["efficientnet_b7"]
    assert not math.isclose(rule.depth(7), b7.depth, rel_tol=0.05)


def test_published_table_holds_every_variant():
    names = set(VARIANTS)
    expected = {f"efficientnet_b{i}" for i in range(9)} | {"efficientnet_l2"}
    expected |= {f"efficientnet_lite{i}" for i in range(5)}
    expected |= {f"efficientnet_v2_{size}" for size in ("b0", "b1", "b2", "b3", "s", "m", "l", "xl")}
    assert names == expected
    assert {v.family for v in VARIANTS.values()} == {"v1", "lite", "v2"}
    crops = [VARIANTS[f"efficientnet_b{i}"].crop_pct for i in range(8)]
    assert crops == [0.875, 0.882, 0.890, 0.904, 0.922, 0.934, 0.942, 0.949]


def test_old_names_of_the_tables_still_work_with_a_warning():
    import effnet.registry
    import effnet.scaling

    with pytest.warns(DeprecationWarning, match="effnet.variants.VARIANTS"):
        old = effnet.scaling.PUBLISHED_VARIANTS
    assert set(old) == {v.name for v in VARIANTS.values() if v.family != "v2"}
    with pytest.warns(DeprecationWarning, match="variants"):
        assert len(effnet.registry.V2_VARIANTS) == 8


def test_nearest_published():
    assert nearest_published(1.0, 1.0, 224).name == "efficientnet_b0"
    assert nearest_published(2.05, 3.0, 590).name == "efficientnet_b7"
    assert nearest_published(1.0, 1.0, 224, lite=True).name == "efficientnet_lite0"


@pytest.mark.parametrize(("argv", "message"), [
    (["--phi", "inf"], "phi (--phi) must be a finite number, got inf"),
    (["--phi", "nan"], "phi (--phi) must be a finite number, got nan"),
    (["--phi", "1e6"], "phi=1e+06 gives width xinf, depth xinf at inf px, beyond what is built here"),
    (["--phi", "30"], "use a smaller --phi"),
    (["--phi=-1e6"], "use a larger --phi"),
    (["--phi", "1", "--alpha", "0"], "alpha (--alpha) must be a positive finite number (the paper's is 1.2), got 0"),
    (["--phi", "1", "--gamma", "-1"], "gamma (--gamma) must be a positive finite number"),
])
def test_scale_refuses_phi_and_bases_that_give_no_buildable_network(capsys, argv, message):
    assert main(["scale", *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1


def test_scale_still_accepts_the_published_range():
    for phi in (-3.0, 0.0, 8.0):
        CompoundScaling().check(phi)
    with pytest.raises(ConfigError):
        CompoundScaling(beta=float("inf")).check(1.0)
