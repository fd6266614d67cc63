"""The fast inference path: prepared networks give the original logits; the CUDA-graph runner
falls back on the CPU and refuses what a graph cannot replay."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from effnet import Classifier, create_model
from effnet.accelerate import (
    CudaGraphRunner,
    FusedMBConvInference,
    PreparedModel,
    _Captured,
    fuse_mbconv_blocks,
    prepare_for_inference,
)
from effnet.errors import ConfigError
from effnet.fuse import count_batchnorms, fold_batchnorm
from effnet.layers import MBConv
from effnet.model import EfficientNet
from effnet.testing import randomize_statistics

TINY = {"width": 0.25, "depth": 0.25, "num_classes": 5}
NETWORKS = {  # SAME padding (asymmetric at stride 2) / ReLU6 without SE / V2's Fused-MBConv stages
    "b0": lambda: create_model("efficientnet_b0", padding="same", **TINY),
    "lite0": lambda: create_model("efficientnet_lite0", **TINY),
    "v2_b0": lambda: create_model("efficientnet_v2_b0", **TINY),
}


def _trained_looking(model: EfficientNet) -> EfficientNet:
    """BatchNorm statistics and biases of trained size (:func:`effnet.testing.randomize_statistics`)
    and a classifier large enough for logits of order one."""
    randomize_statistics(model)
    with torch.no_grad():
        model.classifier.weight.mul_(50.0)
    return model


def _relative_error(out: torch.Tensor, expected: torch.Tensor) -> float:
    return float((out - expected).abs().max() / expected.abs().max())


@pytest.mark.parametrize("name", list(NETWORKS))
@pytest.mark.parametrize("dtype", [torch.float32, pytest.param(torch.bfloat16, marks=pytest.mark.cpu_kinds)])
def test_prepared_model_gives_the_original_logits(name: str, dtype: torch.dtype) -> None:
    model = _trained_looking(NETWORKS[name]())
    images = torch.randn(2, 3, 37, 45)
    with torch.no_grad():
        expected = model(images)
    prepared = prepare_for_inference(model, "cpu", dtype=dtype)
    assert isinstance(prepared, PreparedModel)
    logits = prepared(images)
    assert logits.dtype == torch.float32
    assert _relative_error(logits, expected) < (1e-5 if dtype == torch.float32 else 3e-2)
    assert count_batchnorms(model) > 0  # the original is left as it was


@pytest.mark.parametrize(("name", "dtype"), [("b0", torch.float32), ("lite0", torch.float32),
                                             ("v2_b0", torch.float32),
                                             pytest.param("b0", torch.bfloat16, marks=pytest.mark.cpu_kinds)])
@pytest.mark.slow
def test_prepared_model_with_triton_kernels_gives_the_original_logits(interpreter: None, name: str,
                                                                      dtype: torch.dtype) -> None:
    model = _trained_looking(NETWORKS[name]())
    images = torch.randn(2, 3, 29, 35)
    with torch.no_grad():
        expected = model(images)
    logits = prepare_for_inference(model, "cpu", dtype=dtype)(images)
    assert _relative_error(logits, expected) < (1e-5 if dtype == torch.float32 else 3e-2)


@pytest.mark.cpu_kinds
def test_prepared_model_ignores_the_callers_autocast() -> None:
    model = _trained_looking(NETWORKS["b0"]())
    images = torch.randn(2, 3, 32, 32)
    prepared = prepare_for_inference(model, "cpu", dtype=torch.float32)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = prepared(images)
    torch.testing.assert_close(logits, prepared(images), rtol=0, atol=0)


@pytest.mark.slow
@pytest.mark.parametrize("interpret", [False, True])
def test_compiled_prepared_model_keeps_the_kernel_whole(request: pytest.FixtureRequest, interpret: bool) -> None:
    if interpret:
        request.getfixturevalue("interpreter")
    model = _trained_looking(NETWORKS["b0"]())
    images = torch.randn(2, 3, 29, 35)
    with torch.no_grad():
        expected = model(images)
    compiled = prepare_for_inference(model, "cpu", dtype=torch.float32, compile_backend="aot_eager")
    assert _relative_error(compiled(images), expected) < 1e-5
    explanation = torch._dynamo.explain(compiled.network)(images.contiguous(memory_format=torch.channels_last))
    assert explanation.graph_break_count == 0
    ops = {str(node.target) for graph in explanation.graphs for node in graph.graph.nodes}
    assert any("effnet.dwconv_act_squeeze" in op for op in ops), ops


def test_every_mbconv_block_is_fused_and_folded() -> None:
    model = NETWORKS["b0"]()
    network = prepare_for_inference(model, "cpu").network
    blocks = [block for stage in network.stages for block in stage]
    assert len(blocks) == sum(isinstance(m, MBConv) for m in model.modules())
    assert all(isinstance(block, FusedMBConvInference) for block in blocks)
    assert count_batchnorms(network) == 0
    assert network.stem.conv.weight.dtype == torch.bfloat16
    assert all(p.dtype == torch.float32 for block in blocks for p in block.se.parameters())  # no cast per call
    assert not any(p.requires_grad for p in network.parameters())


def test_blocks_the_kernel_cannot_run_stay_as_they_are() -> None:
    model = _trained_looking(create_model("efficientnet_b0", activation="hardswish", **TINY))
    assert fuse_mbconv_blocks(fold_batchnorm(model)) == 0
    assert fuse_mbconv_blocks(model) == 0  # BatchNorm not folded: nothing to fuse either
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        expected = model(images)
    torch.testing.assert_close(prepare_for_inference(model, "cpu", dtype=torch.float32)(images), expected,
                               rtol=1e-4, atol=1e-4)


def test_prepare_refuses_what_it_cannot_prepare() -> None:
    model = NETWORKS["lite0"]()
    with pytest.raises(ConfigError, match="EfficientNet"):
        prepare_for_inference(nn.Linear(3, 3), "cpu")
    with pytest.raises(ConfigError, match="dtype"):
        prepare_for_inference(model, "cpu", dtype=torch.int8)
    with pytest.raises(ConfigError, match="CUDA graphs need a CUDA device"):
        prepare_for_inference(model, "cpu", cuda_graphs=True)


def test_graph_runner_calls_the_module_on_the_cpu() -> None:
    prepared = prepare_for_inference(_trained_looking(NETWORKS["lite0"]()), "cpu", dtype=torch.float32)
    runner = CudaGraphRunner(prepared)
    images = torch.randn(3, 3, 32, 32)
    torch.testing.assert_close(runner(images), prepared(images))
    assert runner.graphs == {}


def test_graph_runner_refuses_what_a_graph_cannot_replay() -> None:
    module = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Dropout(0.5))
    with pytest.raises(ConfigError, match="training mode"):
        CudaGraphRunner(module)
    runner = CudaGraphRunner(module.eval())
    with pytest.raises(ConfigError, match="requires gradients"):
        runner(torch.randn(1, 3, 8, 8, requires_grad=True))
    module.train()
    with pytest.raises(ConfigError, match="training mode"):
        runner(torch.randn(1, 3, 8, 8))


class _FakeGraph:
    """Stands for a captured CUDA graph: replaying recomputes the captured call in place."""

    def __init__(self, module: nn.Module, inputs: torch.Tensor, outputs: torch.Tensor) -> None:
        self.module, self.inputs, self.outputs = module, inputs, outputs
        self.replays = 0

    def replay(self) -> None:
        self.outputs.copy_(self.module(self.inputs))
        self.replays += 1


class _FakeStream:
    """Stands for a CUDA stream: records the streams it was made to wait for."""

    def __init__(self) -> None:
        self.waited_for: list[_FakeStream] = []

    def wait_stream(self, other: _FakeStream) -> None:
        self.waited_for.append(other)


def _faked_cuda_runner(monkeypatch: pytest.MonkeyPatch, module: nn.Module, **options: int) -> CudaGraphRunner:
    """A runner that behaves as on a GPU, on the CPU: capture and streams are faked, the
    bookkeeping around them is real. The current stream is ``torch.cuda.current_stream.stream``."""
    runner = CudaGraphRunner(module, **options)
    runner.device = torch.device("cuda")  # as if the module were on a GPU

    def capture(inputs: torch.Tensor) -> _Captured:
        static = inputs.clone()
        outputs = module(static).detach()
        return _Captured(_FakeGraph(module, static, outputs), static, outputs)

    def current_stream(device: torch.device | None = None) -> _FakeStream:
        return current_stream.stream

    current_stream.stream = _FakeStream()
    monkeypatch.setattr(runner, "_capture", capture)
    monkeypatch.setattr(torch.cuda, "current_stream", current_stream)
    return runner


def test_graph_runner_replays_one_graph_per_shape(monkeypatch: pytest.MonkeyPatch) -> None:
    module = nn.Conv2d(3, 4, 3).eval()
    runner = _faked_cuda_runner(monkeypatch, module, max_shapes=2)
    first, second = torch.randn(2, 3, 8, 8), torch.randn(2, 3, 8, 8)
    with torch.inference_mode():  # captured here, replayed outside it
        out_first = runner(first)
    with torch.no_grad():
        out_second = runner(second)
        torch.testing.assert_close(out_first, module(first))  # a copy, not the static output
        torch.testing.assert_close(out_second, module(second))
        runner(torch.randn(1, 3, 8, 8))
        assert len(runner.graphs) == 2
        assert runner.graphs[((2, 3, 8, 8), torch.float32)].graph.replays == 2
        third = torch.randn(1, 3, 9, 9)  # past max_shapes: a plain call
        torch.testing.assert_close(runner(third), module(third))
    assert len(runner.graphs) == 2
    assert torch.cuda.current_stream().waited_for == []  # one stream: ordered already


def test_graph_runner_orders_replays_on_other_streams(monkeypatch: pytest.MonkeyPatch) -> None:
    """The graphs' buffers are shared: a replay on a new stream waits for the last one's."""
    module = nn.Conv2d(3, 4, 3).eval()
    runner = _faked_cuda_runner(monkeypatch, module)
    first, second = torch.cuda.current_stream(), _FakeStream()
    runner(torch.randn(1, 3, 8, 8))
    torch.cuda.current_stream.stream = second
    runner(torch.randn(1, 3, 8, 8))
    runner(torch.randn(2, 3, 8, 8))  # another graph, the same pool
    torch.cuda.current_stream.stream = first
    images = torch.randn(1, 3, 8, 8)
    torch.testing.assert_close(runner(images), module(images))
    assert second.waited_for == [first]
    assert first.waited_for == [second]


def test_classifier_fast_path_gives_the_same_probabilities() -> None:
    model = _trained_looking(NETWORKS["b0"]())
    images = torch.randn(2, 3, 40, 40)
    eager = Classifier(model, class_names=list("abcde"), device="cpu")
    fast = Classifier(model, class_names=list("abcde"), device="cpu", fast=True)
    assert eager.runner is None  # EFFNET_CPU_PATH=eager (conftest): the plain model
    assert isinstance(fast.runner, PreparedModel)
    torch.testing.assert_close(fast.probabilities(images), eager.probabilities(images), rtol=1e-4, atol=1e-5)


def test_a_default_fast_path_that_fails_falls_back_with_a_warning(monkeypatch: pytest.MonkeyPatch) -> None:
    model = _trained_looking(NETWORKS["b0"]())
    images = torch.randn(2, 3, 40, 40)
    expected = Classifier(model, class_names=list("abcde"), device="cpu").probabilities(images)

    def broken(batch: torch.Tensor) -> torch.Tensor:  # as a kernel that does not compile for this GPU
        raise RuntimeError("PTX for sm_120 is not supported\nmore detail")

    monkeypatch.setenv("EFFNET_CPU_PATH", "prepared")  # as if measured fastest here
    chosen = Classifier(model, class_names=list("abcde"), device="cpu")
    assert chosen.inference_path == "prepared (fp32)"
    chosen.runner = broken
    with pytest.warns(RuntimeWarning, match=r"prepared inference path failed on cpu \(RuntimeError: PTX for sm_120"):
        torch.testing.assert_close(chosen.probabilities(images), expected)
    assert chosen.runner is None and chosen.inference_path == "eager"  # from then on the model runs as it is
    asked = Classifier(model, class_names=list("abcde"), device="cpu", fast=True)
    asked.runner = broken
    with pytest.raises(RuntimeError, match="sm_120"):  # asked for explicitly: the failure goes through
        asked.probabilities(images)


def test_a_default_fast_path_that_cannot_be_prepared_falls_back_with_a_warning(
        monkeypatch: pytest.MonkeyPatch) -> None:
    import effnet.cpu_path
    import effnet.infer

    def cannot_prepare(*args: object, **kwargs: object) -> None:  # as a device without memory for the copy
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 MiB")

    model = _trained_looking(NETWORKS["b0"]())
    images = torch.randn(2, 3, 40, 40)
    expected = Classifier(model, class_names=list("abcde"), device="cpu").probabilities(images)
    monkeypatch.setattr(effnet.infer, "prepare_for_inference", cannot_prepare)
    monkeypatch.setattr(effnet.cpu_path, "prepare_for_inference", cannot_prepare)
    monkeypatch.setenv("EFFNET_CPU_PATH", "prepared")  # as if measured fastest here
    with pytest.warns(RuntimeWarning, match=r"prepared inference path failed on cpu \(OutOfMemoryError: CUDA out"):
        chosen = Classifier(model, class_names=list("abcde"), device="cpu")
    assert chosen.runner is None
    torch.testing.assert_close(chosen.probabilities(images), expected)
    with pytest.raises(torch.OutOfMemoryError):  # asked for explicitly: the failure goes through
        Classifier(model, class_names=list("abcde"), device="cpu", fast=True)


def test_classifier_fast_path_needs_an_efficientnet() -> None:
    model = nn.Sequential(nn.Conv2d(3, 2, 1), nn.AdaptiveAvgPool2d(1), nn.Flatten())
    preprocessing = NETWORKS["lite0"]().preprocessing
    assert Classifier(model, list("ab"), preprocessing, device="cpu").runner is None
    with pytest.raises(ConfigError, match="EfficientNet"):
        Classifier(model, list("ab"), preprocessing, device="cpu", fast=True)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_graphs_replay_the_prepared_model() -> None:
    model = _trained_looking(create_model("efficientnet_b0", num_classes=5))
    runner = prepare_for_inference(model, "cuda", dtype=torch.bfloat16)
    assert isinstance(runner, CudaGraphRunner)
    model = model.cuda()
    for batch in (4, 4, 2):
        images = torch.randn(batch, 3, 96, 96, device="cuda")
        with torch.no_grad():
            expected = model(images)
        assert _relative_error(runner(images), expected) < 3e-2
    assert len(runner.graphs) == 2


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two CUDA devices")
def test_cuda_graphs_on_a_device_that_is_not_the_current_one() -> None:
    """Captured on the module's device (not an empty graph on the current one replaying nothing)."""
    model = _trained_looking(create_model("efficientnet_b0", num_classes=5))
    runner = prepare_for_inference(model, "cuda:1", dtype=torch.float32)
    model = model.to("cuda:1")
    with torch.cuda.device(0):
        for _ in range(2):
            images = torch.randn(2, 3, 64, 64, device="cuda:1")
            with torch.no_grad():
                expected = model(images)
            assert _relative_error(runner(images), expected) < 1e-2  # TF32 convolutions
