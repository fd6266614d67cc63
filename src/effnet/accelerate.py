"""A fast inference path: BatchNorm folded, one dtype, channels_last, fused MBConv blocks and
CUDA graphs.

:func:`prepare_for_inference` turns an :class:`~effnet.model.EfficientNet` into a callable for
inference only, with the same logits (within the precision asked for):

- BatchNorm folded into the convs (:func:`effnet.fuse.fold_batchnorm`), weights cast to
  ``dtype`` (the SE modules', which compute the gate in fp32, kept fp32), activations channels_last;
- each MBConv block runs as :class:`FusedMBConvInference`: the expansion's bias and activation,
  the depthwise conv, its bias, its activation and the SE squeeze in one pass
  (:func:`effnet.kernels.dwconv_act_squeeze`) after the raw 1x1 expansion, and the SE gate
  folded into the projection where that moves less memory (:func:`effnet.kernels.gated_pointwise`);
- on CUDA, each input shape captured once in a CUDA graph and replayed
  (:class:`CudaGraphRunner`).

For a benchmark, on a fixed batch shape::

    run = prepare_for_inference(model, "cuda", dtype=torch.bfloat16, cuda_graphs=True)
    logits = run(images)  # images: (N, 3, H, W) on any device, any float dtype; logits fp32 (N, classes)

The first call per shape warms up (Triton compiles, cuDNN picks its algorithms) and captures;
later calls replay. ``compile_backend="inductor"`` also compiles what lies around the kernels
(the depthwise kernel is the custom op ``effnet::dwconv_act_squeeze``, which stays whole). On
the CPU there is no graph: the prepared module is called directly.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .device import resolve_device
from .errors import ConfigError
from .fuse import fold_batchnorm
from .kernels import activate_, conv_padding, dwconv_act_squeeze, gated_pointwise, kernels_run_on
from .layers import Conv2dSame, ConvBnAct, MBConv, SqueezeExcite
from .model import EfficientNet

_KERNEL_ACTIVATIONS: dict[type[nn.Module], str] = {nn.SiLU: "silu", nn.ReLU: "relu", nn.ReLU6: "relu6",
                                                   nn.Identity: "identity"}


def kernel_activation(module: nn.Module) -> str | None:
    """The name under which the depthwise kernel applies ``module`` (None: it cannot)."""
    return _KERNEL_ACTIVATIONS.get(type(module))


class FusedMBConvInference(nn.Module):
    """An MBConv block (BatchNorm already folded) as three passes: the raw 1x1 expansion; its bias
    and activation, the depthwise conv, its bias and activation and the SE squeeze, fused; the
    projection with the SE gate applied inside.

    Build it with :meth:`from_block`; it holds the block's own conv modules.
    """

    def __init__(self, block: MBConv, activation: str) -> None:
        super().__init__()
        # the expansion's bias and activation are applied by the depthwise kernel as it reads
        self.expand = block.expand.conv if isinstance(block.expand, ConvBnAct) else None
        self.expand_activation = "identity" if self.expand is None else kernel_activation(block.expand.act)
        self.dw_conv = block.dw.conv
        self.activation = activation
        self.same_padding = isinstance(self.dw_conv, Conv2dSame)
        self.se = block.se if isinstance(block.se, SqueezeExcite) else None
        self.project = block.project.conv
        self.has_residual = block.has_residual

    @classmethod
    def from_block(cls, block: MBConv) -> FusedMBConvInference | None:
        """The fused form of a folded MBConv block, or None when the kernel cannot apply its
        activation (e.g. hardswish), or its BatchNorms are not folded."""
        activation = kernel_activation(block.dw.act)
        convs = [block.dw, block.project] + ([block.expand] if isinstance(block.expand, ConvBnAct) else [])
        folded = all(isinstance(part.bn, nn.Identity) and part.conv.bias is not None for part in convs)
        expand_ok = not isinstance(block.expand, ConvBnAct) or kernel_activation(block.expand.act) is not None
        if activation is None or not folded or not expand_ok:
            return None
        return cls(block, activation)

    def _expanded(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None, str]:
        """The expansion's output, and the bias and activation still to apply to it as it is read."""
        if self.expand is None:
            return x, None, "identity"
        if kernels_run_on(x):  # the raw 1x1 conv: the kernel adds the rest
            return F.conv2d(x, self.expand.weight), self.expand.bias, self.expand_activation
        # eager: the conv adds its bias (oneDNN fuses it), the activation goes in place
        return activate_(F.conv2d(x, self.expand.weight, self.expand.bias), self.expand_activation), None, "identity"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        hidden, hidden_bias, hidden_activation = self._expanded(x)
        conv = self.dw_conv
        kernel_size, stride = conv.kernel_size[0], conv.stride[0]
        padding = conv_padding(hidden.shape[-2], hidden.shape[-1], kernel_size, stride, self.same_padding)
        y, sums = dwconv_act_squeeze(hidden, conv.weight, conv.bias, stride, padding, self.activation,
                                     squeeze=self.se is not None, input_bias=hidden_bias,
                                     input_activation=hidden_activation)
        if self.se is None:
            out = F.conv2d(y, self.project.weight, self.project.bias)
        else:
            out = gated_pointwise(y, self.se_gate(sums, y.shape[-2] * y.shape[-1]), self.project.weight,
                                  self.project.bias)
        return out + x if self.has_residual else out

    def se_gate(self, sums: torch.Tensor, positions: int) -> torch.Tensor:
        """The SE gate (N, C), in fp32, from the squeeze's spatial sums."""
        se = self.se
        mean = sums / positions
        reduced = F.linear(mean, se.reduce.weight.flatten(1).float(), se.reduce.bias.float())
        return F.linear(se.act(reduced), se.expand.weight.flatten(1).float(), se.expand.bias.float()).sigmoid()


class PreparedModel(nn.Module):
    """The prepared network: takes images in any float dtype and on any device, returns fp32 logits.
    It runs in its own dtype: a caller's autocast is switched off inside (and so never captured
    into a CUDA graph)."""

    def __init__(self, network: nn.Module, dtype: torch.dtype, channels_last: bool) -> None:
        super().__init__()
        self.network = network
        self.dtype = dtype
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format

    @property
    def device(self) -> torch.device:
        return next(self.network.parameters()).device

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        images = images.to(self.device, self.dtype, non_blocking=True).contiguous(memory_format=self.memory_format)
        with torch.autocast(self.device.type, enabled=False):
            return self.network(images).float()


def fuse_mbconv_blocks(network: EfficientNet) -> int:
    """Replace, in place, every MBConv block of a folded network by its
    :class:`FusedMBConvInference`; returns how many were replaced."""
    replaced = 0
    for stage in network.stages:
        for index, block in enumerate(stage):
            fused = FusedMBConvInference.from_block(block) if isinstance(block, MBConv) else None
            if fused is not None:
                stage[index] = fused
                replaced += 1
    return replaced


def prepare_for_inference(model: nn.Module, device: str | torch.device | None = None,
                          dtype: torch.dtype = torch.bfloat16, cuda_graphs: bool | None = None,
                          channels_last: bool = True, compile_backend: str | None = None
                          ) -> PreparedModel | CudaGraphRunner:
    """An inference-only callable computing ``model``'s logits (fp32) fast: see the module docstring.

    ``model`` is left untouched. ``device``: as :func:`effnet.device.resolve_device` (``None``:
    CUDA when available). ``cuda_graphs``: replay CUDA graphs (default: on CUDA devices); asking
    for them elsewhere is a ConfigError. ``compile_backend``: ``torch.compile`` the network with
    this backend (e.g. ``"inductor"``), the kernels staying whole as custom ops; compiling
    happens at the first call (in the graph runner's warm-up).
    """
    if not isinstance(model, EfficientNet):
        raise ConfigError(f"prepare_for_inference takes an effnet EfficientNet, got {type(model).__name__}")
    if dtype not in (torch.float32, torch.bfloat16, torch.float16):
        raise ConfigError(f"inference dtype must be float32, bfloat16 or float16, got {dtype}")
    device = resolve_device(device)
    if cuda_graphs is None:
        cuda_graphs = device.type == "cuda"
    if cuda_graphs and device.type != "cuda":
        raise ConfigError(f"CUDA graphs need a CUDA device, not {device}; use cuda_graphs=False (or None)")
    network = fold_batchnorm(model)
    fuse_mbconv_blocks(network)
    network.requires_grad_(False)
    network.to(device=device, dtype=dtype)
    for block in network.modules():
        if isinstance(block, FusedMBConvInference) and block.se is not None:
            block.se.float()  # the gate is computed in fp32: its weights cast once, not at every call
    if channels_last:
        network.to(memory_format=torch.channels_last)
    prepared = PreparedModel(network, dtype, channels_last).eval()
    if compile_backend is not None:
        prepared.network = torch.compile(network, backend=compile_backend)
    return CudaGraphRunner(prepared) if cuda_graphs else prepared


@dataclass
class _Captured:
    graph: torch.cuda.CUDAGraph
    inputs: torch.Tensor
    outputs: torch.Tensor


class CudaGraphRunner:
    """Calls an inference module through CUDA graphs: the first call with a new input shape and
    dtype warms the module up on a side stream and captures it; later calls copy the input into
    the captured one and replay. Graphs share one memory pool.

    On a module whose parameters are not on CUDA it is a plain call. Past ``max_shapes``
    captured shapes, new shapes run as plain calls too. A module in training mode, or an input
    that needs gradients, is refused: a graph replays a fixed forward without autograd. Calls
    from several threads take turns; a replay on another stream than the last one waits for it
    (the graphs' buffers are shared).
    """

    def __init__(self, module: nn.Module, max_shapes: int = 8, warmup: int = 3) -> None:
        self.module = module
        self.max_shapes = max_shapes
        self.warmup = warmup
        parameter = next(module.parameters(), None)
        self.device = parameter.device if parameter is not None else torch.device("cpu")
        self._check_eval()
        self.graphs: dict[tuple[tuple[int, ...], torch.dtype], _Captured] = {}
        self._pool: tuple[int, int] | None = None
        self._capture_stream: torch.cuda.Stream | None = None
        self._last_stream: torch.cuda.Stream | None = None
        self._lock = threading.Lock()

    def _check_eval(self) -> None:
        if self.module.training:
            raise ConfigError("a module in training mode cannot be captured in a CUDA graph (dropout and "
                              "BatchNorm statistics would be frozen into it); call .eval() first")

    def __call__(self, inputs: torch.Tensor) -> torch.Tensor:
        self._check_eval()
        if inputs.requires_grad:
            raise ConfigError("a CUDA graph replays inference only: the input requires gradients; "
                              "detach it, or call the module itself")
        if self.device.type != "cuda":
            return self.module(inputs)
        # the captured tensors are ordinary ones (not inference tensors), so that calls in and
        # out of torch.inference_mode can share the graphs; one replay at a time (shared buffers)
        with self._lock, torch.inference_mode(False), torch.no_grad():
            return self._replay(inputs)

    def _replay(self, inputs: torch.Tensor) -> torch.Tensor:
        key = (tuple(inputs.shape), inputs.dtype)
        captured = self.graphs.get(key)
        if captured is None:
            if len(self.graphs) >= self.max_shapes:
                return self.module(inputs)
            captured = self.graphs[key] = self._capture(inputs)
        stream = torch.cuda.current_stream(self.device)
        if self._last_stream is not None and self._last_stream != stream:
            stream.wait_stream(self._last_stream)  # its replay and copy out done before the buffers are rewritten
        self._last_stream = stream
        captured.inputs.copy_(inputs, non_blocking=True)
        captured.graph.replay()
        return captured.outputs.clone()

    def _capture(self, inputs: torch.Tensor) -> _Captured:
        # on the module's device and one stream of the runner's: torch.cuda.graph's default
        # capture stream is on whichever device was current when it was first made
        with torch.cuda.device(self.device):
            static = inputs.to(self.device, copy=True)
            if self._capture_stream is None:
                self._capture_stream = torch.cuda.Stream(self.device)
            stream, caller = self._capture_stream, torch.cuda.current_stream(self.device)
            stream.wait_stream(caller)
            graph = torch.cuda.CUDAGraph()
            # the outer context puts the caller's stream back even where a failed capture's exit does not
            with torch.cuda.stream(stream):
                for _ in range(self.warmup):
                    self.module(static)
                # thread_local: other threads (a DataLoader's pinning thread) may use CUDA meanwhile
                with torch.cuda.graph(graph, pool=self._pool, stream=stream, capture_error_mode="thread_local"):
                    outputs = self.module(static)
            caller.wait_stream(stream)
        self._pool = graph.pool()
        return _Captured(graph, static, outputs)
