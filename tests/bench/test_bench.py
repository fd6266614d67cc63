"""effnet.bench: timing and memory helpers, the runner, the reports and ``effnet bench``."""

from __future__ import annotations

import csv
import sys

import pytest
import torch
from torch import nn

import effnet
from effnet.bench import measure as measure_module
from effnet.bench.measure import (
    LatencyStats,
    TimingBudget,
    count_macs,
    count_params,
    extra_memory,
    measure_calls,
    time_interleaved,
)
from effnet.bench.peers import BenchModel, published_top1, resolve, torchvision_top1
from effnet.bench.report import CSV_COLUMNS, PLOTS, write_report
from effnet.bench.runner import FAST_SOURCE, OUT_OF_MEMORY, BenchSettings, run_bench
from effnet.cli import main
from effnet.weights.sources import default_source

QUICK = TimingBudget(warmup=1, iterations=2, min_iterations=1, max_seconds=5.0)


def test_latency_stats_median_p90_and_throughput():
    stats = LatencyStats.from_times([0.004, 0.001, 0.003, 0.002, 0.010], batch_size=8)
    assert stats.median_ms == pytest.approx(3.0)
    assert stats.p90_ms == pytest.approx(4.0 + 0.6 * 6.0)  # between the 4th and 5th of 5 sorted values
    assert stats.throughput == pytest.approx(8 / 0.003)
    assert stats.iterations == 5


def test_measure_calls_stops_at_iterations_or_time_but_keeps_the_minimum():
    calls = []
    measured = measure_calls(lambda: calls.append(1), budget=TimingBudget(2, 7, 3, 10.0))
    assert len(measured.seconds) == 7 and len(calls) == 2 + 7

    calls.clear()
    slow = TimingBudget(warmup=5, iterations=100, min_iterations=3, max_seconds=1e-9)
    measured = measure_calls(lambda: calls.append(1), budget=slow)
    assert len(measured.seconds) == 3  # over budget at once: the minimum, and one warm-up call only
    assert len(calls) == 1 + 3


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="peak RSS is read from /proc")
def test_extra_memory_on_cpu_sees_a_large_allocation():
    def allocate() -> None:
        torch.ones(32, 2**20, dtype=torch.float32)  # 128 MiB, touched

    assert extra_memory(allocate, "cpu") >= 100 * 2**20
    assert extra_memory(lambda: None, "cpu") < 16 * 2**20


def test_time_interleaved_rotates_the_order_and_counts_every_call():
    order = []
    calls = {name: (lambda name=name: order.append(name)) for name in "abc"}
    times = time_interleaved(calls, rounds=3, calls_per_round=2, warmup=0)
    assert {name: len(seconds) for name, seconds in times.items()} == {"a": 6, "b": 6, "c": 6}
    assert order[::2] == list("abc" "bca" "cab")


def test_time_interleaved_pauses_before_each_block(monkeypatch):
    events = []
    monkeypatch.setattr(measure_module.time, "sleep", lambda seconds: events.append(("sleep", seconds)))
    calls = {name: (lambda name=name: events.append(("call", name))) for name in "ab"}
    time_interleaved(calls, rounds=2, calls_per_round=2, warmup=0, pause=0.25)
    assert events == [("sleep", 0.25), ("call", "a"), ("call", "a"), ("sleep", 0.25), ("call", "b"), ("call", "b"),
                      ("sleep", 0.25), ("call", "b"), ("call", "b"), ("sleep", 0.25), ("call", "a"), ("call", "a")]


def test_resolve_names_sources_and_published_accuracy():
    ours = resolve("efficientnet_b1")
    assert (ours.source, ours.resolution) == ("effnet", 240)
    assert ours.top1 == published_top1("efficientnet_b1") == default_source("efficientnet_b1").top1 == 78.642
    peer = resolve("resnet50")
    assert (peer.source, peer.resolution, peer.top1) == ("torchvision", 224, torchvision_top1("resnet50"))
    assert type(resolve("torchvision:efficientnet_b0").build()).__module__.startswith("torchvision")
    assert resolve("effnet:efficientnet_b8").top1 == default_source("efficientnet_b8").top1
    assert resolve("efficientnet_lite2").top1 == default_source("efficientnet_lite2").top1
    formula = resolve("efficientnet_phi1.5")
    assert (formula.source, formula.top1) == ("effnet", None)
    with pytest.raises(ValueError, match="unknown source 'keras'"):
        resolve("keras:efficientnet_b0")


def test_settings_refuse_bad_values():
    with pytest.raises(ValueError, match="unknown dtype 'int8'"):
        BenchSettings(dtype="int8")
    with pytest.raises(ValueError, match="batch sizes must be positive"):
        BenchSettings(batch_sizes=(1, 0))
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA is not available"):
            BenchSettings(device="cuda")


class _Failing(nn.Module):
    def __init__(self, error: Exception) -> None:
        super().__init__()
        self.error = error
        self.linear = nn.Linear(2, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        raise self.error


def _failing(name: str, error: Exception) -> BenchModel:
    return BenchModel(name, "test", 16, 70.0, lambda: _Failing(error))


def _raise_at_build() -> nn.Module:
    raise MemoryError()


@pytest.mark.slow
def test_out_of_memory_is_reported_in_its_row_and_the_others_run(tmp_path):
    small = BenchModel("tiny_b0", "effnet", 32, 77.0, lambda: effnet.create_model("efficientnet_b0", width=0.25))
    models = [
        _failing("cuda_oom", torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")),
        small,
        _failing("cpu_oom", RuntimeError("[enforce fail at alloc_cpu.cpp:117] DefaultCPUAllocator: not enough "
                                         "memory: you tried to allocate 123 bytes")),
        BenchModel("build_oom", "test", 16, None, _raise_at_build),
        _failing("broken", ValueError("wrong input\nsecond line")),
    ]
    rows = run_bench(models, BenchSettings(batch_sizes=(1, 2), timing=QUICK))
    status = {(r.model, r.batch): r.status for r in rows}
    assert len(rows) == 10
    for name in ("cuda_oom", "cpu_oom", "build_oom"):
        assert status[name, 1] == status[name, 2] == OUT_OF_MEMORY
    assert status["broken", 1] == "error: ValueError: wrong input"
    assert status["tiny_b0", 1] == status["tiny_b0", 2] == "ok"
    assert all(r.latency.median_ms > 0 for r in rows if r.model == "tiny_b0")
    written = write_report(rows, tmp_path)
    with open(tmp_path / "bench.csv") as handle:
        records = list(csv.DictReader(handle))
    assert [r["status"] for r in records] == [r.status for r in rows]
    assert all(path.stat().st_size > 0 for path in written)


@pytest.mark.slow
@pytest.mark.cpu_kinds
def test_fast_rows_follow_our_networks_only():
    ours = BenchModel("tiny_b0", "effnet", 32, 77.0, lambda: effnet.create_model("efficientnet_b0", width=0.25))
    peer = BenchModel("tiny_peer", "torchvision", 32, None, lambda: resolve("mobilenet_v2").build())
    rows = run_bench([ours, peer], BenchSettings(batch_sizes=(2,), dtype="bf16", timing=QUICK, fast=True))
    assert [(r.model, r.source) for r in rows] == [("tiny_b0", "effnet"), ("tiny_b0", FAST_SOURCE),
                                                   ("tiny_peer", "torchvision")]
    assert all(r.ok and r.latency.median_ms > 0 for r in rows)
    assert rows[1].params == rows[0].params and rows[1].macs == rows[0].macs  # the unprepared network's
    assert rows[1].peak_memory < rows[0].peak_memory  # bf16 weights instead of fp32 ones


def _png(path) -> bool:
    return path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.slow
def test_cli_bench_writes_csv_markdown_and_plots(tmp_path, capsys):
    out = tmp_path / "report"
    code = main(["bench", "--models", "efficientnet_b0,mobilenet_v2", "--resolution", "32", "--batch", "1",
                 "--iterations", "2", "--min-iterations", "1", "--warmup", "1", "--out", str(out)])
    printed = capsys.readouterr().out
    assert code == 0
    assert "efficientnet_b0" in printed and "mobilenet_v2" in printed and "median ms" in printed

    with open(out / "bench.csv") as handle:
        reader = csv.DictReader(handle)
        assert tuple(reader.fieldnames) == CSV_COLUMNS
        records = {r["model"]: r for r in reader}
    for name, network in (("efficientnet_b0", effnet.create_model("efficientnet_b0")),
                          ("mobilenet_v2", resolve("mobilenet_v2").build())):
        record = records[name]
        assert int(record["params"]) == count_params(network)
        assert int(record["macs"]) == count_macs(network, 32)
        assert (record["batch"], record["resolution"], record["device"], record["status"]) == ("1", "32", "cpu", "ok")
        assert float(record["latency_p90_ms"]) >= float(record["latency_median_ms"]) > 0
        assert float(record["throughput_img_s"]) == pytest.approx(1000 / float(record["latency_median_ms"]), rel=1e-3,
                                                                abs=1e-3)  # rounded to 3 decimals
        assert float(record["peak_memory_mib"]) > 0
    assert float(records["efficientnet_b0"]["top1"]) == published_top1("efficientnet_b0") == 77.692
    assert float(records["mobilenet_v2"]["top1"]) == torchvision_top1("mobilenet_v2")

    markdown = (out / "bench.md").read_text()
    assert "| efficientnet_b0 | effnet (eager) | 1 | 32 | 77.69 | 5.29 |" in markdown  # EFFNET_CPU_PATH (conftest)
    assert records["efficientnet_b0"]["path"] == "eager" and records["mobilenet_v2"]["path"] == ""
    assert all(_png(out / name) for name in PLOTS)


def test_cli_bench_unknown_model_lists_the_known(tmp_path, capsys):
    code = main(["bench", "--models", "efficientnet_b0,resnet51", "--out", str(tmp_path)])
    error = capsys.readouterr().err
    assert code == 2
    assert "unknown model 'resnet51'" in error
    assert "efficientnet_b7" in error and "resnet50" in error and "densenet169" in error
    assert not any(tmp_path.iterdir())  # refused before anything ran


def test_cli_bench_refuses_an_unusable_output_folder_before_running(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    code = main(["bench", "--models", "efficientnet_b7", "--out", str(blocker / "report")])
    assert code == 2
    assert f"cannot create the output folder {blocker / 'report'}" in capsys.readouterr().err


@pytest.mark.slow
def test_cli_bench_times_ours_through_the_cpu_path_a_classifier_takes(tmp_path, monkeypatch):
    import effnet.cli.bench as bench_cli

    built = []
    real = bench_cli.build_cpu_path
    monkeypatch.setattr(bench_cli, "build_cpu_path", lambda network, path: built.append(path) or real(network, path))
    assert main(["bench", "--models", "efficientnet_b0,mobilenet_v2", "--resolution", "32", "--batch", "1",
                 "--iterations", "1", "--min-iterations", "1", "--warmup", "1", "--cpu-path", "prepared",
                 "--out", str(tmp_path)]) == 0
    with open(tmp_path / "bench.csv") as handle:
        assert [(r["model"], r["path"]) for r in csv.DictReader(handle)] == [("efficientnet_b0", "prepared"),
                                                                           ("mobilenet_v2", "")]
    assert built == ["prepared"]
