"""EfficientNet (V1 and V2): stem -> MBConv / Fused-MBConv stages -> head, built from one config.

Width and depth are applied in one place (:meth:`EfficientNetConfig.scaled_stages`); the
network then reads top to bottom. The model offers single- and multi-scale features, a
resettable classifier, gradient checkpointing and a memory mode that recomputes cheap
activations in backward (:mod:`effnet.recompute`), and works under ``torch.jit.script``,
``torch.compile(fullgraph=True)`` and ``torch.export``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

import torch
from torch import nn

from .deprecation import warn_renamed
from .description import ModelDescription, Preprocessing
from .errors import ConfigError
from .layers import ConvBnAct, FusedMBConv, LayerOptions, MBConv, PaddingMode
from .recompute import MEMORY_MODES, run_recomputed
from .scaling import round_filters, round_repeats
from .variants import B0_STAGES, StageSpec


@dataclass(frozen=True)
class ScaledStage:
    """A stage after width and depth scaling: concrete channels and block count."""

    in_channels: int
    out_channels: int
    repeats: int
    kernel_size: int
    stride: int
    expand_ratio: int
    fused: bool = False
    se_ratio: float = 0.25


@dataclass(frozen=True)
class FeatureInfo:
    """One level of the multi-scale feature pyramid."""

    stage: int
    stride: int
    channels: int


@dataclass(frozen=True)
class EfficientNetConfig:
    """Everything that defines an EfficientNet architecture (the input size is not part of it:
    it lives in the model's :class:`~effnet.description.Preprocessing`).

    ``lite`` applies the Lite scaling rules: stem and head widths stay fixed and the first
    and last stages keep their block counts. (Lite's ReLU6 and missing SE are the
    ``activation`` and ``se_ratio`` fields.) ``round_limit`` is the channel rounding rule of
    :func:`~effnet.scaling.round_filters` (0.9 for V1 and V2-S/M/L/XL, 0 for V2-B0..B3).
    EfficientNetV2 is the same class with its own ``stages`` (see
    :data:`effnet.variants.V2_S_STAGES`), ``stem_channels`` and ``round_limit``.
    The published networks' values come from :mod:`effnet.variants`.
    """

    width: float = 1.0
    depth: float = 1.0
    drop_rate: float = 0.2
    drop_path_rate: float = 0.2
    activation: str = "silu"
    se_ratio: float = 0.25
    lite: bool = False
    padding: PaddingMode = "symmetric"
    bn_momentum: float = 0.01
    bn_eps: float = 1e-3
    in_chans: int = 3
    stem_channels: int = 32
    head_channels: int = 1280
    divisor: int = 8
    round_limit: float = 0.9
    stages: tuple[StageSpec, ...] = field(default=B0_STAGES)

    def __post_init__(self) -> None:
        checks = {
            "width": self.width > 0,
            "depth": self.depth > 0,
            "drop_rate": 0.0 <= self.drop_rate < 1.0,
            "drop_path_rate": 0.0 <= self.drop_path_rate < 1.0,
            "se_ratio": 0.0 <= self.se_ratio <= 1.0,
            "in_chans": self.in_chans > 0,
            "bn_eps": 0.0 < self.bn_eps < 1.0,
            "bn_momentum": 0.0 <= self.bn_momentum <= 1.0,
        }
        for name, ok in checks.items():
            if not ok:
                raise ConfigError(f"invalid {name}={getattr(self, name)!r} in EfficientNetConfig")
        self.layer_options()  # validates activation and padding

    def layer_options(self) -> LayerOptions:
        return LayerOptions(self.activation, self.padding, self.bn_momentum, self.bn_eps)

    def replace(self, **changes: object) -> EfficientNetConfig:
        if "dropout" in changes:
            warn_renamed("EfficientNetConfig.replace(dropout=...)", "drop_rate=...")
            changes["drop_rate"] = changes.pop("dropout")
        return replace(self, **changes)  # type: ignore[arg-type]  # the dataclass checks the names

    @property
    def dropout(self) -> float:
        """Deprecated name of :attr:`drop_rate`."""
        warn_renamed("EfficientNetConfig.dropout", "EfficientNetConfig.drop_rate")
        return self.drop_rate

    def round_channels(self, channels: int) -> int:
        return round_filters(channels, self.width, self.divisor, self.round_limit)

    @property
    def stem_width(self) -> int:
        return self.stem_channels if self.lite else self.round_channels(self.stem_channels)

    @property
    def head_width(self) -> int:
        return self.head_channels if self.lite else self.round_channels(self.head_channels)

    def scaled_stages(self) -> list[ScaledStage]:
        """The stages with width and depth applied: the one place scaling happens."""
        stages = []
        in_channels = self.stem_width
        last = len(self.stages) - 1
        for index, spec in enumerate(self.stages):
            out_channels = self.round_channels(spec.out_channels)
            fixed_depth = self.lite and index in (0, last)
            repeats = spec.repeats if fixed_depth else round_repeats(spec.repeats, self.depth)
            se_ratio = self.se_ratio if spec.se_ratio is None else spec.se_ratio
            stages.append(ScaledStage(in_channels, out_channels, repeats, spec.kernel_size,
                                      spec.stride, spec.expand_ratio, spec.fused, se_ratio))
            in_channels = out_channels
        return stages


class EfficientNet(nn.Module):
    """EfficientNet classifier (and backbone) built from an :class:`EfficientNetConfig`.

    ``description`` is the model's identity (name, preprocessing, class names, weights source;
    see :class:`~effnet.description.ModelDescription`); every model has one, read through
    ``model.description`` or its shortcuts ``model.model_name``, ``model.preprocessing``,
    ``model.class_names`` and ``model.pretrained_source``, and changed with :meth:`describe`.
    """

    __jit_unused_properties__ = ["model_name", "preprocessing", "class_names", "pretrained_source"]

    def __init__(self, config: EfficientNetConfig = EfficientNetConfig(), num_classes: int = 1000,
                 description: ModelDescription | None = None) -> None:
        super().__init__()
        self.config = config
        self.in_chans = config.in_chans
        self.grad_checkpointing = False
        self.memory_mode = "save"
        options = config.layer_options()
        stages = config.scaled_stages()

        self.stem = ConvBnAct(config.in_chans, config.stem_width, 3, 2, options=options)
        total_blocks = sum(s.repeats for s in stages)
        block_index = 0
        built = []
        for stage in stages:
            blocks = []
            for j in range(stage.repeats):
                in_channels = stage.in_channels if j == 0 else stage.out_channels
                stride = stage.stride if j == 0 else 1
                drop_path_rate = config.drop_path_rate * block_index / total_blocks
                blocks.append(
                    FusedMBConv(in_channels, stage.out_channels, stage.kernel_size, stride, stage.expand_ratio,
                                drop_path_rate, options) if stage.fused else
                    MBConv(in_channels, stage.out_channels, stage.kernel_size, stride, stage.expand_ratio,
                           stage.se_ratio, drop_path_rate, options))
                block_index += 1
            built.append(nn.Sequential(*blocks))
        self.stages = nn.Sequential(*built)
        self.num_features = config.head_width
        self.head = ConvBnAct(stages[-1].out_channels, self.num_features, 1, options=options)
        self.dropout = nn.Dropout(config.drop_rate)
        self.num_classes = num_classes
        self.classifier: nn.Module = self._make_classifier(num_classes)

        self.feature_info = self._feature_pyramid(stages)
        """One :class:`FeatureInfo` per map :meth:`forward_multiscale` returns."""
        self._feature_stages = [info.stage for info in self.feature_info]
        self._init_weights()
        self.description = description or ModelDescription()
        """The model's :class:`~effnet.description.ModelDescription` (name, preprocessing, class names, weights)."""
        self.describe()  # checks the class names against the head

    def describe(self, **changes: object) -> ModelDescription:
        """Change fields of :attr:`description` (``name``, ``preprocessing``, ``class_names``,
        ``weights``); class names must match the classifier's size. Returns the new description."""
        description = self.description.replace(**changes)
        names = description.class_names
        if names is not None and self.num_classes and len(names) != self.num_classes:
            raise ConfigError(f"{len(names)} class names for a model with {self.num_classes} classes")
        self.description = description
        return description

    @property
    def model_name(self) -> str:
        return self.description.name

    @property
    def preprocessing(self) -> Preprocessing:
        return self.description.preprocessing

    @property
    def class_names(self) -> list[str] | None:
        names = self.description.class_names
        return list(names) if names is not None else None

    @property
    def pretrained_source(self) -> str | None:
        return self.description.weights

    @staticmethod
    def _feature_pyramid(stages: list[ScaledStage]) -> list[FeatureInfo]:
        """The last stage at each stride (2, 4, 8, 16, 32 for the reference stages)."""
        info = []
        stride = 2
        for index, stage in enumerate(stages):
            stride *= stage.stride
            is_last_at_stride = index == len(stages) - 1 or stages[index + 1].stride > 1
            if is_last_at_stride:
                info.append(FeatureInfo(index, stride, stage.out_channels))
        return info

    def _make_classifier(self, num_classes: int) -> nn.Module:
        return nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()

    def _init_weights(self) -> None:
        """Reference init: conv N(0, sqrt(2 / fan_out)); dense U(+-1/sqrt(classes)); BN 1, 0."""
        if self.stem.conv.weight.is_meta:  # shape-only model (counting, planning): no values to set
            return
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                kh, kw = module.kernel_size
                fan_out = kh * kw * module.out_channels // module.groups
                nn.init.normal_(module.weight, 0.0, math.sqrt(2.0 / fan_out))
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
            elif isinstance(module, nn.Linear):
                bound = 1.0 / math.sqrt(module.out_features)
                nn.init.uniform_(module.weight, -bound, bound)
                nn.init.zeros_(module.bias)

    def reset_classifier(self, num_classes: int, class_names: list[str] | None = None) -> None:
        """Replace the classifier with a fresh one for ``num_classes`` (0: no classifier); the
        old class names go with the old head (``class_names`` names the new classes)."""
        self.num_classes = num_classes
        self.description = self.description.replace(class_names=None)
        self.describe(class_names=class_names)
        self.classifier = self._make_classifier(num_classes)
        if isinstance(self.classifier, nn.Linear):
            bound = 1.0 / math.sqrt(max(num_classes, 1))
            nn.init.uniform_(self.classifier.weight, -bound, bound)
            nn.init.zeros_(self.classifier.bias)

    @torch.jit.ignore
    def set_drop_rate(self, rate: float) -> None:
        """Change the head's dropout rate (``config.drop_rate`` follows): how training schedules
        that grow it per stage change it."""
        if not 0.0 <= rate < 1.0:
            raise ConfigError(f"drop_rate must be in [0, 1), got {rate}")
        self.dropout.p = float(rate)
        self.config = self.config.replace(drop_rate=float(rate))

    def zero_init_classifier(self) -> None:
        """Start the classifier at zero, so that first predictions are uniform."""
        if not isinstance(self.classifier, nn.Linear):
            raise ConfigError("the model has no classifier to zero (num_classes=0); "
                              "give it one with reset_classifier(num_classes) first")
        nn.init.zeros_(self.classifier.weight)
        nn.init.zeros_(self.classifier.bias)

    def zero_init_residual(self) -> None:
        """Start every block that has a residual connection as the identity
        (:meth:`~effnet.layers.MBConv.zero_init_last`)."""
        for module in self.modules():
            if isinstance(module, (MBConv, FusedMBConv)) and module.has_residual:
                module.zero_init_last()

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute all activations in backward, keeping only the input of the stem, of each block
        and of the head (it overrides :meth:`set_memory_mode`)."""
        self.grad_checkpointing = enable

    @torch.jit.ignore
    def set_memory_mode(self, mode: str) -> None:
        """What training keeps for backward: ``save`` (everything autograd needs) or ``recompute``
        (only convolution outputs and the inputs of the stem, blocks and head; BatchNorm-apply,
        activations and the SE gate are recomputed in backward, see :mod:`effnet.recompute`).
        Gradients and BatchNorm statistics are those of ``save``."""
        if mode not in MEMORY_MODES:
            raise ConfigError(f"unknown memory mode {mode!r}; choose one of {', '.join(MEMORY_MODES)}")
        self.memory_mode = mode

    def _check_input(self, x: torch.Tensor) -> None:
        if x.dim() != 4 or x.shape[1] != self.in_chans:
            raise ConfigError(
                f"EfficientNet expects an input of shape (N, {self.in_chans}, H, W), got {list(x.shape)}")

    @torch.jit.unused
    def _recomputed_features(self, x: torch.Tensor) -> torch.Tensor:
        selective = not self.grad_checkpointing
        x = run_recomputed(self.stem, x, selective)
        for stage in self.stages:
            for block in stage.children():
                x = run_recomputed(block, x, selective)
        return run_recomputed(self.head, x, selective)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """The head's feature map (N, num_features, H/32, W/32)."""
        self._check_input(x)
        if (self.training and (self.grad_checkpointing or self.memory_mode == "recompute")
                and not torch.jit.is_scripting()):
            return self._recomputed_features(x)
        return self.head(self.stages(self.stem(x)))

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """Pool, dropout and classify a feature map; ``pre_logits`` stops before the classifier."""
        x = x.mean((2, 3), keepdim=True).flatten(1)  # keepdim: XNNPACK lowers only this form of the mean
        x = self.dropout(x)
        return x if pre_logits else self.classifier(x)

    @torch.jit.export
    def forward_multiscale(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Feature maps at strides 2, 4, 8, 16 and 32 (see :attr:`feature_info`), for backbones."""
        self._check_input(x)
        x = self.stem(x)
        features: list[torch.Tensor] = []
        for index, stage in enumerate(self.stages):
            x = stage(x)
            if index in self._feature_stages:
                features.append(x)
        return features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))
