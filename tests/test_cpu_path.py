"""effnet.cpu_path: every exact CPU path gives the plain model's logits; the choice is measured
once per machine, cached, shared by processes, and pinned by an argument or EFFNET_CPU_PATH."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import textwrap
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from effnet import Classifier, create_model
from effnet.cpu_path import (
    MEASURED_PATHS,
    PIN_VARIABLE,
    TOLERANCE,
    build_cpu_path,
    cache_path,
    choose_cpu_path,
    logits_difference,
    measure_paths,
)
from effnet.errors import ConfigError
from effnet.testing import randomize_statistics

SRC = Path(__file__).resolve().parents[1]
TINY = {"width": 0.25, "depth": 0.25, "num_classes": 5}
NETWORKS = {  # SE + SiLU / ReLU6 without SE / Fused-MBConv stages / TF 'SAME' padding
    "b0": lambda: create_model("efficientnet_b0", **TINY),
    "lite0": lambda: create_model("efficientnet_lite0", **TINY),
    "v2_b0": lambda: create_model("efficientnet_v2_b0", **TINY),
    "b0_same": lambda: create_model("efficientnet_b0", padding="same", **TINY),
}


@pytest.fixture
def unpinned(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """No EFFNET_CPU_PATH, and effnet's cache (the choices included) in a fresh folder."""
    monkeypatch.delenv(PIN_VARIABLE, raising=False)
    monkeypatch.setenv("EFFNET_HOME", str(tmp_path))
    return tmp_path


def _trained_looking(name: str) -> torch.nn.Module:
    """BatchNorm statistics of trained size, logits of order one, and 40 px images (a quick measurement)."""
    model = randomize_statistics(NETWORKS[name]())
    with torch.no_grad():
        model.classifier.weight.mul_(50.0)
    model.describe(preprocessing=replace(model.preprocessing, resolution=40))
    return model


@pytest.mark.cpu_kinds
@pytest.mark.parametrize("name", ["b0", "lite0", pytest.param("v2_b0", marks=pytest.mark.slow),
                                  pytest.param("b0_same", marks=pytest.mark.slow)])
def test_every_measured_path_gives_the_plain_logits_in_fp32(name: str) -> None:
    model = _trained_looking(name)
    with torch.inference_mode():
        for size in ((1, 3, 40, 40), (2, 3, 48, 36)):  # a new shape is traced (onednn-graph) and runs again
            images = torch.randn(*size)
            expected = model(images)
            for path in MEASURED_PATHS:
                runner = build_cpu_path(model, path)
                assert logits_difference(expected, runner(images)) <= TOLERANCE, (path, size)
                assert logits_difference(expected, runner(images)) <= TOLERANCE, (path, size)  # the traced call


@pytest.mark.slow
@pytest.mark.cpu_kinds
def test_the_compiled_path_gives_the_plain_logits_in_fp32() -> None:
    model = _trained_looking("b0")
    images = torch.randn(2, 3, 40, 40)
    with torch.inference_mode():
        assert logits_difference(model(images), build_cpu_path(model, "compiled")(images)) <= TOLERANCE


def test_the_bf16_path_is_opt_in_and_named_bf16(unpinned: Path) -> None:
    model = _trained_looking("b0")
    classifier = Classifier(model, list("abcde"), device="cpu", cpu_path="prepared-bf16")
    assert classifier.inference_path == "prepared-bf16 (bf16)"
    assert classifier.cpu_path_choice.how == "pinned"
    assert "prepared-bf16" not in MEASURED_PATHS  # never chosen by the measurement
    assert not cache_path().exists()  # a pinned path measures nothing


def _fixed_times(times: dict[str, float], calls: list[str]):
    def measure(model: torch.nn.Module) -> dict[str, float]:
        calls.append(model.model_name)
        return dict(times)
    return measure


def test_the_choice_is_measured_once_then_read_from_the_cache(unpinned: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    model = NETWORKS["b0"]()
    calls: list[str] = []
    measure = _fixed_times({"eager": 1.0, "channels_last": 0.9, "prepared": 0.7, "onednn-graph": 0.5}, calls)
    first = choose_cpu_path(model, measure=measure)
    assert (first.path, first.how) == ("onednn-graph", "measured")
    assert "onednn-graph 0.50x" in first.describe() and "load average" in first.describe()
    again = choose_cpu_path(NETWORKS["b0"](), measure=measure)  # another process would read the same file
    assert (again.path, again.how, again.relative_time) == ("onednn-graph", "cached", first.relative_time)
    assert calls == ["efficientnet_b0"]
    choose_cpu_path(NETWORKS["lite0"](), measure=measure)  # another architecture: measured for itself
    threads = torch.get_num_threads()
    monkeypatch.setattr(torch, "get_num_threads", lambda: threads + 1)  # other threads: measured again
    choose_cpu_path(model, measure=measure)
    assert calls == ["efficientnet_b0", "efficientnet_lite0", "efficientnet_b0"]


def test_a_bad_cache_record_is_dropped_with_a_warning(unpinned: Path, caplog: pytest.LogCaptureFixture) -> None:
    model = NETWORKS["b0"]()
    calls: list[str] = []
    measure = _fixed_times({"eager": 1.0, "prepared": 0.6}, calls)
    choose_cpu_path(model, measure=measure)
    records = json.loads(cache_path().read_text())
    for record in records.values():
        record["path"] = "warp-drive"
    cache_path().write_text(json.dumps(records))
    with caplog.at_level(logging.WARNING, logger="effnet"):
        assert choose_cpu_path(model, measure=measure).how == "measured"
    assert "path 'warp-drive' is not one of eager" in caplog.text
    cache_path().write_text("[1, 2]")  # a JSON list, not records
    with caplog.at_level(logging.WARNING, logger="effnet"):
        assert choose_cpu_path(model, measure=measure).how == "measured"
    assert "holds a JSON list" in caplog.text
    assert len(calls) == 3


def test_a_path_is_pinned_by_argument_or_environment(unpinned: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    model = NETWORKS["lite0"]()
    assert choose_cpu_path(model, "channels_last").path == "channels_last"
    monkeypatch.setenv(PIN_VARIABLE, "prepared")
    choice = choose_cpu_path(model)
    assert (choice.path, choice.how) == ("prepared", "pinned")
    assert choose_cpu_path(model, "eager").path == "eager"  # the argument wins
    monkeypatch.setenv(PIN_VARIABLE, "fastest")
    with pytest.raises(ConfigError, match="unknown CPU path 'fastest'; choose one of eager, channels_last, prepared"):
        choose_cpu_path(model)
    assert not cache_path().exists()


def test_cpu_path_does_not_apply_on_other_devices_or_without_the_fast_path() -> None:
    with pytest.raises(ConfigError, match="cpu_path='prepared' chooses how the model runs on the CPU.*fast=False"):
        Classifier(NETWORKS["b0"](), device="cpu", fast=False, cpu_path="prepared")


@pytest.mark.slow
@pytest.mark.cpu_kinds
def test_a_classifier_on_the_cpu_runs_the_measured_path_with_the_plain_probabilities(unpinned: Path) -> None:
    model = _trained_looking("b0")
    images = torch.randn(3, 3, 40, 40)
    plain = Classifier(model, list("abcde"), device="cpu", fast=False)
    chosen = Classifier(model, list("abcde"), device="cpu")
    choice = chosen.cpu_path_choice
    assert choice.how == "measured" and choice.path in MEASURED_PATHS
    assert set(choice.relative_time) == set(MEASURED_PATHS)  # every exact path ran and was timed
    assert choice.relative_time[choice.path] == min(choice.relative_time.values())
    assert chosen.inference_path == f"{choice.path} (fp32)"
    torch.testing.assert_close(chosen.probabilities(images), plain.probabilities(images), rtol=1e-4, atol=1e-5)
    assert Classifier(model, list("abcde"), device="cpu").cpu_path_choice.how == "cached"


def test_measure_paths_leaves_out_a_path_whose_logits_differ(monkeypatch: pytest.MonkeyPatch) -> None:
    import effnet.cpu_path as cpu_path

    real = cpu_path.build_cpu_path

    def build(model: torch.nn.Module, path: str):
        runner = real(model, path)
        return (lambda images: runner(images) * 1.01) if path == "channels_last" else runner

    monkeypatch.setattr(cpu_path, "build_cpu_path", build)
    with pytest.warns(RuntimeWarning, match="CPU path channels_last left out: its logits differ from the model's"):
        times = measure_paths(_trained_looking("lite0"), ("eager", "channels_last", "prepared"), seconds=0.1)
    assert set(times) == {"eager", "prepared"} and times["eager"] == 1.0


def test_a_network_too_slow_for_rounds_of_batch_8_is_measured_at_batch_1_alone(
        monkeypatch: pytest.MonkeyPatch) -> None:
    import effnet.cpu_path as cpu_path

    real = cpu_path.build_cpu_path
    batches: list[int] = []

    def build(model: torch.nn.Module, path: str):
        runner = real(model, path)
        return lambda images: (batches.append(len(images)), runner(images))[1]

    monkeypatch.setattr(cpu_path, "build_cpu_path", build)
    model = _trained_looking("lite0")
    measure_paths(model, ("eager", "prepared"), seconds=0.1)
    assert set(batches) == {2, 1, 8}  # the logits check, then both batch sizes
    batches.clear()
    monkeypatch.setattr(cpu_path, "LARGER_BATCH_SECONDS", 1e-6)  # as B8 on two cores: minutes per path
    times = measure_paths(model, ("eager", "prepared"), seconds=0.1)
    assert set(batches) == {2, 1} and set(times) == {"eager", "prepared"}


CHOOSE_IN_A_PROCESS = textwrap.dedent("""
    import random, sys, time
    from effnet import create_model
    from effnet.cpu_path import MEASURED_PATHS, choose_cpu_path

    def measure(model):  # slow, and a different answer in each process unless they share it
        time.sleep(1.5)
        return {path: random.uniform(0.5, 1.5) for path in MEASURED_PATHS}

    choice = choose_cpu_path(create_model("efficientnet_b0", width=0.25, depth=0.25), measure=measure)
    print(choice.path, choice.how)
""")


@pytest.mark.slow
def test_two_processes_on_one_machine_take_the_same_path(unpinned: Path) -> None:
    env = {"EFFNET_HOME": str(unpinned), "PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1",
           "PYTHONPATH": f"{SRC / 'src'}:{SRC / 'packages' / 'effnet-runtime' / 'src'}"}
    processes = [subprocess.Popen([sys.executable, "-c", CHOOSE_IN_A_PROCESS], env=env, stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True) for _ in range(2)]
    answers = []
    for process in processes:
        out, err = process.communicate(timeout=300)
        assert process.returncode == 0, err
        answers.append(out.split())
    assert answers[0][0] == answers[1][0]
    assert sorted(how for _, how in answers) == ["cached", "measured"]  # the second waited for the first


def test_serve_and_predict_run_the_pinned_path_a_classifier_takes(tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    from effnet.infer import load_classifier
    from effnet.serve.predictor import load_predictor
    from effnet.weights.io import save_model

    model = _trained_looking("lite0")
    model.describe(class_names=list("abcde"))
    checkpoint = save_model(model, tmp_path / "lite0.safetensors")
    monkeypatch.setenv(PIN_VARIABLE, "channels_last")
    served = load_predictor(checkpoint=checkpoint, device="cpu")  # effnet serve --runtime torch
    assert served.classifier.inference_path == "channels_last (fp32)"
    assert served.classifier.cpu_path_choice.how == "pinned"
    assert load_classifier(checkpoint=checkpoint, device="cpu").inference_path == "channels_last (fp32)"
