"""``effnet pick``: measuring candidates against the reference until the spread is small, the
busy machine, uncertain candidates, one unit for decision, table and plot, the exit code when
nothing fits, the JSON, the cache (validated, merged, answering any budget), the skip rule,
the Pareto front and the pick."""

from __future__ import annotations

import csv
import json
import logging
import math
import subprocess
import sys
import threading

import pytest

from effnet.bench.measure import time_rounds
from effnet.cli import main
from effnet.errors import ExitCode
from effnet.pick import report as report_module
from effnet.pick import search as pick_module
from effnet.pick.cache import Candidate, Measurement, MeasurementCache
from effnet.pick.search import MachineCheck, PickResult, PickRow, PickSettings, check_machine, mark

QUICK = ["--models", "efficientnet_lite0,efficientnet_lite1", "--runtimes", "onnxruntime,openvino",
         "--resolution", "32", "--max-seconds", "0.3"]
LITE = ("efficientnet_lite0", "efficientnet_lite1")


def _measurement(p50: float, spread: float = 0.05, reference: float = 10.0, memory: float | None = 10.0,
                 file_mb: float = 5.0) -> Measurement:
    """p10-p90 of +-``spread`` around ``p50`` ms, against a reference of ``reference`` ms."""
    low, high = p50 * (1 - spread), p50 * (1 + spread)
    return Measurement(low, p50, high, low / reference, p50 / reference, high / reference, reference, 8, True,
                       memory, file_mb)


def _row(model: str, top1: float, p50: float, runtime: str = "onnxruntime", **figures: float) -> PickRow:
    return PickRow(Candidate(model, runtime, 1, 224), top1, _measurement(p50, **figures))


def _result(rows: list[PickRow], settings: PickSettings) -> PickResult:
    marked = mark(rows, settings)
    choice = max((r for r in marked if r.fits), key=lambda r: r.top1, default=None)
    return PickResult(settings, marked, choice, len(rows), 0)


def test_pareto_front_and_budgets():
    rows = [_row("a", 75.0, 5.0), _row("b", 77.0, 9.0), _row("c", 76.0, 12.0), _row("d", 80.0, 20.0, memory=500),
            PickRow(Candidate("e", "onnxruntime", 1, 224), 81.0, status="skipped: d already 20.0 ms")]
    marked = mark(rows, PickSettings(max_latency_ms=25, max_memory_mb=100))
    assert [r.pareto for r in marked] == [True, True, False, True, False]
    assert [r.verdict for r in marked] == ["fits", "fits", "fits", "over", ""]
    assert [r.fits for r in mark(rows, PickSettings(max_latency_ms=10, max_file_mb=4))][:2] == [False, False]
    # relative to the reference (10 ms in every row): 0.95x keeps a and b, not c (1.2x)
    assert [r.verdict for r in mark(rows, PickSettings(max_latency_ratio=0.95))][:3] == ["fits", "fits", "over"]


def test_a_candidate_whose_interval_straddles_the_budget_is_uncertain_and_not_picked():
    settings = PickSettings(max_latency_ms=10)
    rows = [_row("fast", 75.0, 6.0), _row("close", 79.0, 9.8, spread=0.2), _row("slow", 81.0, 14.0, spread=0.2)]
    result = _result(rows, settings)
    assert [r.verdict for r in result.rows] == ["fits", "uncertain", "over"]
    assert result.pick.candidate.model == "fast"
    alone = _result([rows[1]], settings)
    assert alone.pick is None
    sentence = alone.sentence()
    assert sentence.startswith("No candidate is surely within 10 ms at batch 1 on this machine; the closest is close "
                               "in onnxruntime at 9.80 ms (p10-p90 7.84-11.76)")
    assert "Uncertain (their p10-p90 straddles the budget" in sentence


def test_decision_table_and_plot_use_the_budgets_unit():
    # in milliseconds "quick" is faster; relative to its own (busier) reference it is slower
    rows = [_row("quick", 76.0, 8.0, reference=8.0), _row("steady", 77.0, 9.0, reference=12.0)]
    by_ms = _result(rows, PickSettings(max_latency_ms=8.5))
    by_ratio = _result(rows, PickSettings(max_latency_ratio=0.9))
    assert by_ms.pick.candidate.model == "quick" and by_ratio.pick.candidate.model == "steady"
    assert report_module.headers(by_ms)[8:10] == ("p50 ms", "p10-p90 ms")
    assert report_module.headers(by_ratio)[8:10] == ("p50 x ref", "p10-p90 x ref")
    assert report_module.display_cells(by_ratio.pick, by_ratio)[8] == "0.75"
    for result, budget in ((by_ms, 8.5), (by_ratio, 0.9)):
        axes = report_module.plot(result).axes[0]
        budget_line = next(line for line in axes.lines if line.get_label().startswith("budget"))
        assert list(budget_line.get_xdata()) == [budget, budget]
        circled = next(c for c in axes.collections if c.get_label() == "pick")
        x = circled.get_offsets()[0][0]
        assert x == pytest.approx(result.settings.interval(result.pick.measurement)[1]) and x <= budget


def test_one_latency_budget_positive_and_finite(capsys):
    with pytest.raises(ValueError, match="give one latency budget"):
        PickSettings(max_latency_ms=10, max_latency_ratio=0.5)
    for value in (math.nan, 0.0, -1.0, math.inf):
        with pytest.raises(ValueError, match=f"--max-latency-ms must be a positive number, got {value}"):
            PickSettings(max_latency_ms=value)
    for flag, value in (("--max-latency-ms", "nan"), ("--max-latency-ms", "0"), ("--max-latency-ms", "1e30"),
                        ("--max-latency-ratio", "inf"), ("--max-latency-ratio", "-1")):
        with pytest.raises(SystemExit) as refused:  # argparse's usage error, before anything is measured
            main(["pick", flag, value, "--models", "efficientnet_lite0"])
        assert refused.value.code == ExitCode.REFUSED
        assert f"argument {flag}: {value!r} is not a finite number in (0, " in capsys.readouterr().err
    assert main(["pick", "--families", "lite"]) == ExitCode.REFUSED
    assert "give one latency budget: --max-latency-ms MS, or --max-latency-ratio R" in capsys.readouterr().err


class FakeClock:
    """Stands in for effnet.bench.measure's ``time``: calls advance it by the seconds they say."""

    def __init__(self) -> None:
        self.now = 0.0

    def perf_counter(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds

    def call(self, durations):
        durations = iter(durations)
        return lambda: self.sleep(next(durations))


@pytest.fixture
def clock(monkeypatch) -> FakeClock:
    import effnet.bench.measure as measure_module

    fake = FakeClock()
    monkeypatch.setattr(measure_module, "time", fake)
    return fake


def test_time_rounds_stops_once_the_spread_is_small_or_at_the_cap(clock):
    steady = time_rounds({"a": clock.call([0.002] * 1000), "ref": clock.call([0.004] * 1000)}, "ref", 5.0,
                         small_spread=0.1, min_rounds=5, round_seconds=0.001)
    assert steady.settled and len(steady.seconds["a"]) == 5 and steady.ratios("a", "ref") == pytest.approx([0.5] * 5)
    noisy = time_rounds({"a": clock.call([0.001, 0.002, 0.004] * 1000), "ref": clock.call([0.002] * 3000)}, "ref",
                        0.3, small_spread=0.1, min_rounds=5, round_seconds=0.001)
    assert not noisy.settled and len(noisy.seconds["a"]) > 5  # went on to the cap
    assert sum(noisy.seconds["a"]) + sum(noisy.seconds["ref"]) == pytest.approx(0.3, abs=0.01)


def test_a_busy_machine_is_detected_said_first_and_measured_longer(tmp_path, monkeypatch, capsys, clock):
    busy = check_machine(clock.call([0.002, 0.002, 0.006] * 100), seconds=0.05)
    assert busy.busy and busy.spread == pytest.approx(3.0)
    quiet = check_machine(clock.call([0.003] * 300), seconds=0.05)
    assert not quiet.busy and quiet.spread == 1.0
    assert busy.describe().startswith("The machine is busy (") and "measured up to 3x longer" in busy.describe()

    caps = []
    monkeypatch.setattr(pick_module, "check_machine", lambda reference: MachineCheck(1.8, 1.5, 7.5, 2))
    monkeypatch.setattr(pick_module, "reference_runner", lambda *args: None)
    monkeypatch.setattr(pick_module, "measure_candidate",
                        lambda runner, batch, reference, reference_batch, cap, before: caps.append(cap)
                        or _measurement(5.0))
    monkeypatch.setattr(pick_module._Builder, "runner", lambda self, name, candidate: (None, 1.0))
    code = main(["pick", "--max-latency-ms", "100", "--models", "efficientnet_lite0", "--runtimes", "onnxruntime",
                 "--resolution", "32", "--max-seconds", "2", "--cache-dir", str(tmp_path)])
    assert code == ExitCode.OK and caps == [6.0]
    captured = capsys.readouterr()
    assert captured.err.startswith("The machine is busy (load average 7.5 on 2 cores, the reference's p90/p10 1.80")
    assert "measuring up to 1 more candidate(s) not in the cache" in captured.err
    assert captured.out.startswith("The machine is busy")  # the report says it first too


def _fill_cache(folder, measurements: dict[tuple[str, str], Measurement]) -> None:
    cache = MeasurementCache(folder, None)
    for (model, runtime), measurement in measurements.items():
        cache.put(Candidate(model, runtime, 1, 32), measurement)


def test_the_cache_answers_any_budget_and_nothing_fits_exits_3_naming_the_closest(tmp_path, monkeypatch, capsys):
    _fill_cache(tmp_path, {("efficientnet_lite0", "onnxruntime"): _measurement(4.0),
                           ("efficientnet_lite0", "onnxruntime-int8"): _measurement(2.0, memory=None),
                           ("efficientnet_lite1", "onnxruntime"): _measurement(6.0),
                           ("efficientnet_lite1", "onnxruntime-int8"): _measurement(3.0)})
    monkeypatch.setattr(pick_module, "measure_candidate", pytest.fail)  # everything comes from the cache
    common = ["--models", ",".join(LITE), "--runtimes", "onnxruntime,onnxruntime-int8", "--resolution", "32",
              "--cache-dir", str(tmp_path)]
    assert main(["pick", "--max-latency-ms", "5", *common]) == ExitCode.OK
    printed = capsys.readouterr().out
    assert "0 measured, 4 from the cache" in printed
    assert "Pick efficientnet_lite1 in onnxruntime-int8 (int8): expected top-1 " in printed
    assert "(fp32)" in printed and "not measured" in printed and "| 0 |" not in printed
    lite0_int8 = next(line for line in printed.splitlines() if "lite0" in line and "int8" in line)
    assert "74.4 (-0.7)" in lite0_int8  # TensorFlow Lite's published INT8 figure beside the fp32 one

    assert main(["pick", "--max-latency-ms", "1", *common, "--format", "json"]) == ExitCode.NOTHING_FITS
    record = json.loads(capsys.readouterr().out)
    assert record["pick"] is None and record["closest"]["model"] == "efficientnet_lite0"
    assert record["closest"]["runtime"] == "onnxruntime-int8" and record["budget"]["unit"] == "ms"
    assert record["sentence"].startswith("No candidate is surely within 1 ms at batch 1 on this machine; the closest "
                                         "is efficientnet_lite0 in onnxruntime-int8 at 2.00 ms")
    assert len(record["rows"]) == 4 and all(r["p50_ms"] > 0 for r in record["rows"])
    assert main(["pick", "--max-latency-ratio", "0.1", *common, "--out", str(tmp_path / "out")]) == 3
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["pick.csv", "pick.json", "pick.md", "pick.png"]


def test_skipped_and_unavailable_candidates_are_summarised_in_one_line_each():
    settings = PickSettings(max_latency_ms=10)
    rows = [_row("efficientnet_lite0", 75.0, 12.0),
            PickRow(Candidate("efficientnet_lite1", "onnxruntime", 1, 224), 76.0, status="skipped: ..."),
            PickRow(Candidate("efficientnet_lite2", "onnxruntime", 1, 224), 77.0, status="skipped: ..."),
            PickRow(Candidate("efficientnet_lite0", "openvino-bf16", 1, 224), 75.0,
                    status="unavailable: no bf16 on this CPU")]
    result = _result(rows, settings)
    printed = report_module.format_result(result)
    assert "skipped (2, a smaller sibling already surely over the budget in the same runtime): onnxruntime: " \
           "lite1, lite2" in printed
    assert "unavailable (1): openvino-bf16 (no bf16 on this CPU): lite0" in printed
    assert sum("efficientnet_lite" in line for line in printed.split("\n\n")[0].splitlines()) == 1  # the measured row


def test_a_bad_cache_file_or_record_is_dropped_with_a_warning(tmp_path, caplog):
    candidate = Candidate("efficientnet_lite0", "onnxruntime", 1, 224)
    MeasurementCache(tmp_path, None).put(candidate, _measurement(3.0))
    path = tmp_path / "measurements.json"
    good = json.loads(path.read_text())
    key, record = next(iter(good.items()))
    for change, reason in (({"p50_ms": "fast"}, "p50_ms is 'fast'"), ({"p50_ms": math.nan}, "p50_ms is nan"),
                           ({"reference_p50_ms": 0}, "reference_p50_ms is 0"), (None, "missing p10_ms")):
        broken = dict(record["measurement"])
        if change is None:
            del broken["p10_ms"]
        else:
            broken.update(change)
        path.write_text(json.dumps({key: {**record, "measurement": broken}, "other": record}))
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="effnet"):
            cache = MeasurementCache(tmp_path, None)
        assert cache.get(candidate) is None and reason in caplog.text, reason
    path.write_text(json.dumps([record]))
    with caplog.at_level(logging.WARNING, logger="effnet"):
        assert MeasurementCache(tmp_path, None).get(candidate) is None
    assert "holds a JSON list" in caplog.text


def test_two_picks_at_once_keep_both_measurements(tmp_path):
    first, second = MeasurementCache(tmp_path, None), MeasurementCache(tmp_path, None)  # both read an empty file
    one, two = Candidate("efficientnet_lite0", "onnxruntime", 1, 224), Candidate("efficientnet_b0", "openvino", 1, 224)
    first.put(one, _measurement(3.0))
    second.put(two, _measurement(7.0))
    merged = MeasurementCache(tmp_path, None)
    assert merged.get(one).p50_ms == 3.0 and merged.get(two).p50_ms == 7.0

    # writers racing (threads share the lock protocol with processes): no measurement is lost
    candidates = [Candidate(f"model{i}", "onnxruntime", 1, 224) for i in range(40)]
    caches = [MeasurementCache(tmp_path, None) for _ in range(2)]
    writers = [threading.Thread(target=lambda k=k: [caches[k].put(c, _measurement(1.0 + i))
                                                   for i, c in enumerate(candidates) if i % 2 == k])
               for k in range(2)]
    for writer in writers:
        writer.start()
    for writer in writers:
        writer.join()
    merged = MeasurementCache(tmp_path, None)
    assert [merged.get(c).p50_ms for c in candidates] == [1.0 + i for i in range(40)]


WRITER = """
import sys
from pathlib import Path
from effnet.pick.cache import Candidate, Measurement, MeasurementCache
folder, parity = Path(sys.argv[1]), int(sys.argv[2])
cache = MeasurementCache(folder, None)  # read before the other process wrote anything
print("ready", flush=True)
sys.stdin.read()  # both start writing together
for i in range(parity, 30, 2):
    cache.put(Candidate(f"model{i}", "onnxruntime", 1, 224), Measurement(1, 1 + i, 2 + i, 1, 1, 1, 1, 5, True, None, 1))
"""


@pytest.mark.slow
def test_two_pick_processes_at_once_keep_both_measurements(tmp_path):
    writers = [subprocess.Popen([sys.executable, "-c", WRITER, str(tmp_path), str(parity)], stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for parity in (0, 1)]
    for writer in writers:
        assert writer.stdout.readline() == "ready\n", writer.stderr.read()
    for writer in writers:
        writer.stdin.close()
    for writer in writers:
        assert writer.wait(timeout=300) == 0, writer.stderr.read()
    merged = MeasurementCache(tmp_path, None)
    assert [merged.get(Candidate(f"model{i}", "onnxruntime", 1, 224)).p50_ms for i in range(30)] == \
        [1.0 + i for i in range(30)]


def test_the_cache_is_keyed_by_the_machine(tmp_path, monkeypatch):
    import effnet.pick.cache as cache_module

    candidate = Candidate("efficientnet_lite0", "onnxruntime", 1, 224)
    MeasurementCache(tmp_path, None).put(candidate, _measurement(3.0))
    assert MeasurementCache(tmp_path, None).get(candidate) == _measurement(3.0)
    assert MeasurementCache(tmp_path, 1).get(candidate) is None
    monkeypatch.setattr(cache_module, "cpu_description", lambda: {"model": "another CPU", "features": []})
    assert MeasurementCache(tmp_path, None).get(candidate) is None


def test_memory_that_cannot_be_seen_is_not_measured_never_zero(monkeypatch, clock):
    monkeypatch.setattr(pick_module, "resident_memory", lambda: 1_000_000)  # no growth seen
    measurement = pick_module.measure_candidate(lambda batch: clock.sleep(0.001), None,
                                                lambda batch: clock.sleep(0.002), None, 0.05, 1_000_000)
    assert measurement.memory_mb is None and measurement.rounds >= 5
    row = PickRow(Candidate("x", "onnxruntime-int8", 1, 224), 75.0, measurement)
    result = _result([row], PickSettings(max_latency_ms=100))
    assert report_module.display_cells(result.rows[0], result)[12] == "not measured"
    assert _result([row], PickSettings(max_latency_ms=100, max_memory_mb=50)).rows[0].verdict == "uncertain"


def test_families_list_their_variants_smallest_first():
    assert pick_module.family_variants("v2") == [f"efficientnet_v2_{v}" for v in ("b0", "b1", "b2", "b3", "s", "m",
                                                                                  "l", "xl")]
    assert pick_module.family_variants("lite")[0] == "efficientnet_lite0"
    assert pick_module.family_variants("v1")[-1] == "efficientnet_b7"


def test_unknown_runtime_and_family_are_refused(capsys):
    assert main(["pick", "--max-latency-ms", "10", "--runtimes", "tensorrt"]) == 2
    assert "unknown runtime tensorrt; choose from eager, compile, onnxruntime" in capsys.readouterr().err
    assert main(["pick", "--max-latency-ms", "10", "--families", "v3"]) == 2
    assert "unknown family 'v3'; choose from v1, lite, v2" in capsys.readouterr().err


@pytest.mark.slow
def test_pick_measures_marks_the_front_then_answers_another_budget_from_the_cache(tmp_path, capsys, monkeypatch):
    cache, out = tmp_path / "cache", tmp_path / "out"
    assert main(["pick", "--max-latency-ms", "1000", *QUICK, "--cache-dir", str(cache), "--out", str(out)]) == 0
    captured = capsys.readouterr()
    assert captured.err.startswith("The machine is ")
    assert "4 measured, 0 from the cache" in captured.out
    assert "Pick efficientnet_lite1 in " in captured.out and "(published figure of the fp32 weights)" in captured.out
    rows = list(csv.DictReader((out / "pick.csv").open()))
    assert [(r["model"], r["runtime"]) for r in rows] == [
        ("efficientnet_lite0", "onnxruntime"), ("efficientnet_lite0", "openvino"),
        ("efficientnet_lite1", "onnxruntime"), ("efficientnet_lite1", "openvino")]
    picked = [r for r in rows if r["picked"] == "True"]
    assert len(picked) == 1 and picked[0]["model"] == "efficientnet_lite1" and picked[0]["pareto"] == "True"
    for r in rows:
        assert 0 < float(r["p10_ms"]) <= float(r["p50_ms"]) <= float(r["p90_ms"])
        assert float(r["reference_p50_ms"]) > 0 and float(r["file_mb"]) > 1 and int(r["rounds"]) >= 5
        assert r["memory_mb"] == "" or float(r["memory_mb"]) > 0  # measured, or said not measured: never 0
    assert float(rows[0]["top1"]) == pytest.approx(75.1, abs=0.5)
    assert (out / "pick.png").read_bytes()[:4] == b"\x89PNG"
    assert json.loads((out / "pick.json").read_text())["pick"]["model"] == "efficientnet_lite1"

    monkeypatch.setattr(pick_module, "measure_candidate", pytest.fail)
    assert main(["pick", "--max-latency-ms", "0.001", *QUICK, "--cache-dir", str(cache)]) == ExitCode.NOTHING_FITS
    captured = capsys.readouterr()
    assert "0 measured, 4 from the cache" in captured.out and captured.err == ""
    fastest = min(rows, key=lambda r: float(r["p50_ms"]))  # which one depends on the machine's load
    assert (f"No candidate is surely within 0.001 ms at batch 1 on this machine; the closest is {fastest['model']} "
            f"in {fastest['runtime']} at {float(fastest['p50_ms']):.2f} ms") in captured.out


@pytest.mark.slow
def test_checkpoints_are_ranked_by_their_top1_measured_on_the_users_images(tmp_path, capsys):
    from dataclasses import replace

    import torch

    from effnet.deploy.calibration import labelled_loader
    from effnet.weights.io import save_model
    from helpers.deploy import tiny_model, write_images

    data, calib = write_images(tmp_path / "eval", seed=1), write_images(tmp_path / "calib")
    paths, expected = [], {}
    for name in ("efficientnet_lite0", "efficientnet_b0"):
        model = tiny_model(name=name)
        size = 32 if name == "efficientnet_lite0" else 40  # siblings of other sizes than the reference's 224
        model.describe(class_names=["0", "1", "2"], preprocessing=replace(model.preprocessing, resolution=size))
        paths.append(save_model(model, tmp_path / f"{name}.safetensors"))
        with torch.no_grad():
            hits = [(model(images).argmax(1) == labels).float() for images, labels in
                    labelled_loader(data, model.preprocessing, model.class_names)]
        expected[name] = 100 * torch.cat(hits).mean().item()
    assert main(["pick", "--max-latency-ms", "1000", "--runtimes", "onnxruntime,onnxruntime-int8",
                 "--checkpoint", str(paths[0]), "--checkpoint", str(paths[1]), "--eval", str(data),
                 "--calib", str(calib), "--max-seconds", "0.2", "--cache-dir", str(tmp_path / "cache"),
                 "--out", str(tmp_path / "out")]) == 0
    assert "measured on " in capsys.readouterr().out
    rows = list(csv.DictReader((tmp_path / "out" / "pick.csv").open()))
    assert [(r["model"], r["runtime"]) for r in rows] == [
        ("efficientnet_lite0 (efficientnet_lite0.safetensors)", "onnxruntime"),
        ("efficientnet_lite0 (efficientnet_lite0.safetensors)", "onnxruntime-int8"),
        ("efficientnet_b0 (efficientnet_b0.safetensors)", "onnxruntime"),
        ("efficientnet_b0 (efficientnet_b0.safetensors)", "onnxruntime-int8")]
    assert all(r["top1_measured"] == "True" for r in rows)
    assert [r["resolution"] for r in rows] == ["32", "32", "40", "40"]
    assert float(rows[0]["top1"]) == pytest.approx(expected["efficientnet_lite0"])
    assert float(rows[2]["top1"]) == pytest.approx(expected["efficientnet_b0"])


def test_checkpoints_need_an_evaluation_folder(tmp_path, capsys):
    assert main(["pick", "--max-latency-ms", "10", "--checkpoint", str(tmp_path / "a.safetensors")]) == 2
    assert "pass --eval DIR" in capsys.readouterr().err
