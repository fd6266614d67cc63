"""The report of ``effnet pick``: the table of what was measured (Pareto front, pick and
verdicts marked), one line each for the skipped and the unavailable candidates, CSV, Markdown,
JSON and a plot of expected top-1 against latency, all in the budget's unit with the budget
drawn on it."""

from __future__ import annotations

import csv
import json
from collections import defaultdict
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING

from ..deploy.environment import describe_cpu
from ..files import atomic_write
from ..table import format_markdown, format_table
from ..weights.sources import PUBLISHED_INT8, TFLITE_LITE_README, PublishedInt8
from .search import REFERENCE, PickResult, PickRow

if TYPE_CHECKING:
    import matplotlib.figure

CSV_COLUMNS = ("picked", "pareto", "verdict", "model", "runtime", "precision", "batch", "resolution", "top1",
               "top1_measured", "published_int8_top1", "p10_ms", "p50_ms", "p90_ms", "ratio_p10", "ratio_p50",
               "ratio_p90", "reference_p50_ms", "throughput_img_s", "memory_mb", "file_mb", "rounds", "settled",
               "cached", "status")
"""The columns of ``pick.csv`` (and the keys of each row of ``pick.json``)."""
NOT_MEASURED = "not measured"


def headers(result: PickResult) -> tuple[str, ...]:
    unit = result.settings.unit
    return ("", "model", "runtime", "precision", "batch", "res", "top-1 %", "published INT8 %", f"p50 {unit}",
            f"p10-p90 {unit}", "p50 ms" if unit != "ms" else "x ref", "img/s", "mem MB", "file MB", "rounds",
            "verdict")


def legend(result: PickResult) -> str:
    unit = result.settings.unit
    return ("`>` the pick, `*` on the Pareto front of (p50, top-1). top-1: measured on the evaluation images in the "
            "candidate's runtime when checkpoints were given, else the published ImageNet figure of the fp32 weights; "
            "`(fp32)` marks it on INT8 and bf16 candidates, whose own accuracy is then not measured. published INT8: "
            f"TensorFlow Lite's post-training INT8 top-1 and its drop from fp32 ({TFLITE_LITE_README}), for its "
            f"weights and quantizer, not these. p50 and p10-p90 over interleaved rounds, in the budget's unit "
            f"({unit}); x ref: the ratio to the reference ({REFERENCE}) timed in the same rounds. verdict: fits "
            "(p10-p90 within the budget), uncertain (it straddles the budget), over; `unsettled`: the spread was "
            "still wide at the cap. mem: growth of resident memory while loading and running the candidate.")


def published_int8(row: PickRow) -> PublishedInt8 | None:
    """The publisher's INT8 figures for an INT8 row whose own top-1 was not measured."""
    measured = row.measurement is not None and row.measurement.top1 is not None
    return None if measured or row.candidate.precision != "int8" else PUBLISHED_INT8.get(row.candidate.model)


def _number(value: float | None, digits: int) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


def _top1_cell(row: PickRow) -> str:
    measured = row.measurement is not None and row.measurement.top1 is not None
    label = " (fp32)" if row.candidate.precision != "fp32" and not measured and row.top1 is not None else ""
    return _number(row.top1, 2) + label


def display_cells(row: PickRow, result: PickResult) -> list[str]:
    c, m, s = row.candidate, row.measurement, result.settings
    mark = (">" if row is result.pick else "") + ("*" if row.pareto else "")
    published = published_int8(row)
    int8 = f"{published.int8:.1f} (-{published.drop:.1f})" if published else "-"
    if m is None:
        return [mark, c.model, c.runtime, c.precision, str(c.batch), str(c.resolution), _top1_cell(row), int8,
                *["-"] * 7, row.status]
    low, mid, high = s.interval(m)
    verdict = row.verdict + (", cached" if row.cached else "") + ("" if m.settled else ", unsettled")
    return [mark, c.model, c.runtime, c.precision, str(c.batch), str(c.resolution), _top1_cell(row), int8,
            f"{mid:.2f}", f"{low:.2f}-{high:.2f}", f"{m.p50_ms:.2f}" if s.unit != "ms" else f"{m.ratio_p50:.2f}",
            _number(c.batch * 1000 / m.p50_ms, 1), NOT_MEASURED if m.memory_mb is None else f"{m.memory_mb:,.0f}",
            f"{m.file_mb:.2f}", str(m.rounds), verdict]


def _shown(result: PickResult) -> list[PickRow]:
    """The rows of the table: measured, or failed while measuring."""
    return [r for r in result.rows if not r.status.startswith(("skipped", "unavailable"))]


def summary_lines(result: PickResult) -> list[str]:
    """One line for the skipped candidates and one for the unavailable ones (none if there are none)."""
    lines = []
    for kind, why in (("skipped", "a smaller sibling already surely over the budget in the same runtime"),
                      ("unavailable", "")):
        rows = [r for r in result.rows if r.status.startswith(kind)]
        if not rows:
            continue
        groups: dict[str, list[str]] = defaultdict(list)
        for row in rows:
            reason = "" if kind == "skipped" else f" ({row.status.partition(': ')[2]})"
            groups[f"{row.candidate.runtime}{reason}"].append(row.candidate.model.replace("efficientnet_", ""))
        listed = "; ".join(f"{where}: {', '.join(models)}" for where, models in groups.items())
        lines.append(f"{kind} ({len(rows)}{', ' + why if why else ''}): {listed}")
    return lines


def format_result(result: PickResult) -> str:
    """What pick prints: the machine's state (when it measured), the table, the skipped and
    unavailable candidates in one line each, the CPU and reference, then the decision."""
    table = format_table(headers(result), [display_cells(r, result) for r in _shown(result)])
    reference = result.reference_ms()
    ref = f"; reference {REFERENCE}: {reference:.2f} ms" if reference else ""
    parts = ([result.machine.describe()] if result.machine else []) + [table, *summary_lines(result)]
    return ("\n".join(parts) + f"\n\n{describe_cpu()}{ref}; {result.measured} measured, {result.from_cache} from the "
            f"cache.\n{result.sentence()}")


def row_record(row: PickRow, result: PickResult) -> dict[str, object]:
    """One row for scripts: every figure, unrounded, under :data:`CSV_COLUMNS`."""
    c, m = row.candidate, row.measurement
    published = published_int8(row)
    figures = asdict(m) if m is not None else {}
    return {
        "picked": row is result.pick, "pareto": row.pareto, "verdict": row.verdict or None, "model": c.model,
        "runtime": c.runtime, "precision": c.precision, "batch": c.batch, "resolution": c.resolution,
        "top1": row.top1, "top1_measured": m is not None and m.top1 is not None,
        "published_int8_top1": published.int8 if published else None,
        **{k: figures.get(k) for k in ("p10_ms", "p50_ms", "p90_ms", "ratio_p10", "ratio_p50", "ratio_p90",
                                       "reference_p50_ms", "memory_mb", "file_mb", "rounds", "settled")},
        "throughput_img_s": c.batch * 1000 / m.p50_ms if m else None, "cached": row.cached, "status": row.status,
    }


def result_record(result: PickResult) -> dict[str, object]:
    """The whole result for scripts (``--format json``, ``pick.json``)."""
    s = result.settings
    closest = result.closest() if result.pick is None else None
    return {
        "budget": {"unit": s.unit, "latency": s.budget, "batch": s.batch, "max_memory_mb": s.max_memory_mb,
                   "max_file_mb": s.max_file_mb},
        "cpu": describe_cpu(), "reference": REFERENCE, "reference_p50_ms": result.reference_ms(),
        "machine": asdict(result.machine) | {"busy": result.machine.busy} if result.machine else None,
        "measured": result.measured, "from_cache": result.from_cache, "sentence": result.sentence(),
        "pick": row_record(result.pick, result) if result.pick else None,
        "closest": row_record(closest, result) if closest else None,
        "rows": [row_record(r, result) for r in result.rows],
    }


def write_outputs(result: PickResult, out: Path) -> list[Path]:
    """``pick.csv``, ``pick.md``, ``pick.json`` and ``pick.png`` in ``out`` (created if needed)."""
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / "pick.csv", out / "pick.md", out / "pick.json", out / "pick.png"]
    atomic_write(paths[0], lambda temp: _write_csv(result, temp))
    machine = f"{result.machine.describe()}\n\n" if result.machine else ""
    markdown = (f"# effnet pick\n\n{result.sentence()}\n\n{machine}Measured on {describe_cpu()}. {legend(result)}\n\n"
                + format_markdown(headers(result), [display_cells(r, result) for r in _shown(result)]) + "\n\n"
                + "".join(f"- {line}\n" for line in summary_lines(result)))
    atomic_write(paths[1], lambda temp: temp.write_text(markdown))
    atomic_write(paths[2], lambda temp: temp.write_text(json.dumps(result_record(result), indent=1) + "\n"))
    atomic_write(paths[3], lambda temp: plot(result).savefig(temp, format="png", dpi=100))
    return paths


def _write_csv(result: PickResult, path: Path) -> None:
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=CSV_COLUMNS, extrasaction="ignore")
        writer.writeheader()
        for row in result.rows:
            writer.writerow(row_record(row, result))


def plot(result: PickResult) -> matplotlib.figure.Figure:
    """Expected top-1 against the p50 (bars: p10-p90) in the budget's unit, with the budget, the
    reference, the Pareto front and the pick."""
    from matplotlib.figure import Figure

    settings = result.settings
    figure = Figure(figsize=(8, 5), layout="constrained")
    axes = figure.subplots()
    rows = [r for r in result.rows if r.ok and r.top1 is not None]
    for runtime in dict.fromkeys(r.candidate.runtime for r in rows):
        group = [r for r in rows if r.candidate.runtime == runtime]
        low, mid, high = zip(*(settings.interval(r.measurement) for r in group), strict=True)
        axes.errorbar(mid, [r.top1 for r in group], xerr=[[m - lo for m, lo in zip(mid, low, strict=True)],
                                                           [h - m for m, h in zip(mid, high, strict=True)]],
                      fmt="o", markersize=4, capsize=2, label=runtime)
    front = sorted((r for r in rows if r.pareto), key=lambda r: settings.interval(r.measurement)[1])
    if front:
        axes.step([settings.interval(r.measurement)[1] for r in front], [r.top1 for r in front], where="post",
                  color="black", linewidth=0.8, label="Pareto front")
    for row in front:
        axes.annotate(row.candidate.model.replace("efficientnet_", ""),
                      (settings.interval(row.measurement)[1], row.top1), fontsize=7, xytext=(3, 3),
                      textcoords="offset points")
    unit = "ms" if settings.unit == "ms" else "x the reference"
    axes.axvline(settings.budget, color="red", linestyle="--", label=f"budget {settings.budget:g} {unit}")
    reference = result.reference_ms() if settings.unit == "ms" else 1.0
    if reference:
        axes.axvline(reference, color="grey", linestyle=":", label=f"reference ({REFERENCE})")
    if result.pick is not None:
        axes.scatter([settings.interval(result.pick.measurement)[1]], [result.pick.top1], s=160, facecolors="none",
                     edgecolors="red", label="pick", zorder=3)
    if rows:
        axes.set_xscale("log")
    xlabel = (f"p50 latency at batch {settings.batch} (ms)" if settings.unit == "ms"
              else f"p50 latency at batch {settings.batch} relative to the reference")
    axes.set(xlabel=xlabel + ", bars p10-p90", ylabel="expected top-1 (%)", title=f"effnet pick on {describe_cpu()}")
    axes.grid(alpha=0.3)
    axes.legend(fontsize=7)
    return figure
