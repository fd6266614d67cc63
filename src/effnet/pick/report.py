"""The report of ``effnet pick``: the table (Pareto front and pick marked), CSV, Markdown and a
plot of expected top-1 against latency with the budget drawn on it."""

from __future__ import annotations

import csv
from pathlib import Path

from ..deploy.environment import describe_cpu
from ..files import atomic_write
from ..table import format_markdown, format_table
from .search import REFERENCE, PickResult, PickRow

HEADERS = ("", "model", "runtime", "precision", "batch", "res", "top-1 %", "p50 ms", "p90 ms", "x ref", "img/s",
           "mem MiB", "file MB", "status")
CSV_COLUMNS = ("picked", "pareto", "fits", "model", "runtime", "precision", "batch", "resolution", "top1",
               "top1_measured", "p50_ms", "p90_ms", "reference_p50_ms", "throughput_img_s", "memory_mib", "file_mb",
               "iterations", "cached", "status")
LEGEND = ("`>` the pick, `*` on the Pareto front of (latency, top-1); top-1: measured on the evaluation images "
          "in the candidate's runtime when checkpoints were given, else the published ImageNet figure of the fp32 "
          "weights (the INT8 and bf16 candidates' own accuracy is then not measured); x ref: p50 over the "
          f"reference's p50 ({REFERENCE}) measured interleaved with it; mem: growth of resident memory while "
          "loading and running the candidate (approximate).")


def _mark(row: PickRow, result: PickResult) -> str:
    return (">" if row is result.pick else "") + ("*" if row.pareto else "")


def display_cells(row: PickRow, result: PickResult) -> list[str]:
    c, m = row.candidate, row.measurement

    def number(value: float | None, digits: int) -> str:
        return "-" if value is None else f"{value:,.{digits}f}"

    status = row.status if not row.ok else ("cached" if row.cached else "measured") + (
        "" if row.fits else ", over budget")
    return [_mark(row, result), c.model, c.runtime, c.precision, str(c.batch), str(c.resolution),
            number(row.top1, 2), number(m and m.p50_ms, 2), number(m and m.p90_ms, 2),
            number(m and m.p50_ms / m.reference_p50_ms, 2), number(m and c.batch * 1000 / m.p50_ms, 1),
            number(m and m.memory_mb, 0), number(m and m.file_mb, 2), status]


def format_result(result: PickResult) -> str:
    """The printed table, then the pick in one sentence."""
    table = format_table(HEADERS, [display_cells(r, result) for r in result.rows])
    reference = result.reference_ms()
    ref = f"; reference {REFERENCE}: {reference:.2f} ms" if reference else ""
    return (f"{table}\n\n{describe_cpu()}{ref}; {result.measured} measured, {result.from_cache} from the cache.\n"
            f"{result.sentence()}")


def write_outputs(result: PickResult, out: Path) -> list[Path]:
    """``pick.csv``, ``pick.md`` and ``pick.png`` in ``out`` (created if needed)."""
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / "pick.csv", out / "pick.md", out / "pick.png"]
    atomic_write(paths[0], lambda temp: _write_csv(result, temp))
    markdown = (f"# effnet pick\n\n{result.sentence()}\n\nMeasured on {describe_cpu()}. {LEGEND}\n\n"
                + format_markdown(HEADERS, [display_cells(r, result) for r in result.rows]) + "\n")
    atomic_write(paths[1], lambda temp: temp.write_text(markdown))
    atomic_write(paths[2], lambda temp: _plot(result, temp))
    return paths


def _write_csv(result: PickResult, path: Path) -> None:
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=CSV_COLUMNS)
        writer.writeheader()
        for row in result.rows:
            c, m = row.candidate, row.measurement
            writer.writerow({
                "picked": row is result.pick, "pareto": row.pareto, "fits": row.fits, "model": c.model,
                "runtime": c.runtime, "precision": c.precision, "batch": c.batch, "resolution": c.resolution,
                "top1": row.top1, "top1_measured": m is not None and m.top1 is not None,
                "p50_ms": m and round(m.p50_ms, 4), "p90_ms": m and round(m.p90_ms, 4),
                "reference_p50_ms": m and round(m.reference_p50_ms, 4),
                "throughput_img_s": m and round(c.batch * 1000 / m.p50_ms, 3),
                "memory_mib": m and m.memory_mb and round(m.memory_mb, 1), "file_mb": m and round(m.file_mb, 3),
                "iterations": m and m.iterations, "cached": row.cached, "status": row.status})


def _plot(result: PickResult, path: Path) -> None:
    from matplotlib.figure import Figure

    figure = Figure(figsize=(8, 5), layout="constrained")
    axes = figure.subplots()
    rows = [r for r in result.rows if r.ok and r.top1 is not None]
    for runtime in dict.fromkeys(r.candidate.runtime for r in rows):
        group = [r for r in rows if r.candidate.runtime == runtime]
        axes.scatter([r.measurement.p50_ms for r in group], [r.top1 for r in group], label=runtime, s=25)
    front = sorted((r for r in rows if r.pareto), key=lambda r: r.measurement.p50_ms)
    if front:
        axes.step([r.measurement.p50_ms for r in front], [r.top1 for r in front], where="post", color="black",
                  linewidth=0.8, label="Pareto front")
    for row in front:
        axes.annotate(row.candidate.model.replace("efficientnet_", ""), (row.measurement.p50_ms, row.top1),
                      fontsize=7, xytext=(3, 3), textcoords="offset points")
    reference = result.reference_ms()
    settings = result.settings
    if settings.max_latency_ms is not None:
        axes.axvline(settings.max_latency_ms, color="red", linestyle="--",
                     label=f"budget {settings.max_latency_ms:g} ms")
    if settings.max_latency_ratio is not None and reference:
        axes.axvline(settings.max_latency_ratio * reference, color="red", linestyle="-.",
                     label=f"budget {settings.max_latency_ratio:g}x reference")
    if reference:
        axes.axvline(reference, color="grey", linestyle=":", label=f"reference ({REFERENCE})")
    if result.pick is not None:
        axes.scatter([result.pick.measurement.p50_ms], [result.pick.top1], s=160, facecolors="none",
                     edgecolors="red", label="pick")
    if rows:
        axes.set_xscale("log")
    axes.set(xlabel=f"p50 latency at batch {result.settings.batch} (ms)", ylabel="published top-1 (%)",
             title=f"effnet pick on {describe_cpu()}")
    axes.grid(alpha=0.3)
    axes.legend(fontsize=7)
    figure.savefig(path, format="png", dpi=100)
