"""Benchmark reports: the printed table, CSV, Markdown and efficiency plots (PNG).

The CSV keeps raw numbers (params, MACs per image, milliseconds, bytes in MiB); the printed
and Markdown tables round them for reading. Plots are drawn with matplotlib's Agg canvas
directly, so no global backend is switched and no display is needed.
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from pathlib import Path

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter

from ..errors import ConfigError
from ..table import format_markdown, format_table
from .runner import BenchRow

CSV_COLUMNS = ("model", "source", "device", "dtype", "batch", "resolution", "top1", "params", "macs",
               "latency_median_ms", "latency_p90_ms", "throughput_img_s", "peak_memory_mib", "iterations",
               "status")
"""The columns of ``bench.csv``: raw values, one row per network and batch size."""
TABLE_HEADERS = ("model", "source", "batch", "res", "top-1 %", "params M", "GMACs", "median ms", "p90 ms",
                 "img/s", "peak MiB", "status")
"""The columns of the printed table and ``bench.md``: values rounded for reading."""
PLOTS = {"accuracy_vs_macs.png": ("MACs", "GMACs per image"),
         "accuracy_vs_latency.png": ("latency", "median latency per batch (ms)"),
         "accuracy_vs_params.png": ("parameters", "parameters (millions)")}


def csv_record(row: BenchRow) -> dict[str, object]:
    """A row's raw values under :data:`CSV_COLUMNS` (empty where not measured)."""
    latency = row.latency
    return {
        "model": row.model, "source": row.source, "device": row.device, "dtype": row.dtype, "batch": row.batch,
        "resolution": row.resolution, "top1": row.top1, "params": row.params, "macs": row.macs,
        "latency_median_ms": latency and round(latency.median_ms, 4),
        "latency_p90_ms": latency and round(latency.p90_ms, 4),
        "throughput_img_s": latency and round(latency.throughput, 3),
        "peak_memory_mib": None if row.peak_memory is None else round(row.peak_memory / 2**20, 2),
        "iterations": latency.iterations if latency else 0, "status": row.status,
    }


def display_cells(row: BenchRow) -> list[object]:
    """A row rounded for reading, under :data:`TABLE_HEADERS`."""
    latency = row.latency

    def number(value: float | None, digits: int) -> str:
        return "-" if value is None else f"{value:,.{digits}f}"

    return [row.model, row.source, row.batch, row.resolution, number(row.top1, 2),
            number(row.params and row.params / 1e6, 2), number(row.macs and row.macs / 1e9, 3),
            number(latency and latency.median_ms, 2), number(latency and latency.p90_ms, 2),
            number(latency and latency.throughput, 1),
            number(None if row.peak_memory is None else row.peak_memory / 2**20, 0), row.status]


def format_rows(rows: Sequence[BenchRow]) -> str:
    """The aligned plain-text table printed at the end of a run."""
    return format_table(TABLE_HEADERS, [display_cells(r) for r in rows])


def write_csv(rows: Sequence[BenchRow], path: Path) -> Path:
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=CSV_COLUMNS)
        writer.writeheader()
        writer.writerows(csv_record(r) for r in rows)
    return path


def write_markdown(rows: Sequence[BenchRow], path: Path, title: str = "Benchmark") -> Path:
    settings = sorted({f"{r.device}, {r.dtype}" for r in rows})
    text = (f"# {title}\n\n{'; '.join(settings)}. Sizes are per image, latency per batch; "
            "top-1 is the published ImageNet accuracy of the weights at the native resolution.\n\n"
            + format_markdown(TABLE_HEADERS, [display_cells(r) for r in rows]) + "\n")
    path.write_text(text)
    return path


def _plot_series(rows: Sequence[BenchRow], plot: str) -> dict[tuple[str, bool], list[tuple[float, float, str]]]:
    """Points (x, top-1, label) by (series name, whether to join them): our EfficientNets form a
    curve, the other networks stand alone; the latency plot has one pair per batch size."""
    series: dict[tuple[str, bool], list[tuple[float, float, str]]] = {}
    seen: set[tuple[str, str]] = set()
    for row in rows:
        if not row.ok or row.top1 is None:
            continue
        family = row.source == "effnet"
        if plot == "accuracy_vs_latency.png":
            x, suffix = row.latency.median_ms, f", batch {row.batch}"
        elif (row.model, row.source) in seen:
            continue
        else:
            x, suffix = (row.macs / 1e9 if plot == "accuracy_vs_macs.png" else row.params / 1e6), ""
        seen.add((row.model, row.source))
        key = (("EfficientNet (effnet)" if family else "other networks") + suffix, family)
        series.setdefault(key, []).append((x, row.top1, row.model))
    return series


def plot_efficiency(rows: Sequence[BenchRow], out_dir: Path) -> list[Path]:
    """Top-1 against MACs, latency and parameters: three PNGs (networks without a published
    top-1, or whose run failed, are left out and the plot says so when none is left)."""
    paths = []
    for filename, (quantity, xlabel) in PLOTS.items():
        figure = Figure(figsize=(7.2, 5.4), dpi=100)
        FigureCanvasAgg(figure)
        axes = figure.add_subplot()
        series = _plot_series(rows, filename)
        for (label, joined), points in series.items():
            points.sort()
            xs, ys, _ = zip(*points, strict=True)
            axes.plot(xs, ys, marker="o" if joined else "s", linestyle="-" if joined else "none", label=label)
            for x, y, name in points:
                axes.annotate(name, (x, y), textcoords="offset points", xytext=(4, 4), fontsize=7)
        if series:
            axes.set_xscale("log")
            plain = FuncFormatter(lambda value, _: f"{value:g}")
            axes.xaxis.set_major_formatter(plain)
            axes.xaxis.set_minor_formatter(plain)
            axes.tick_params(axis="x", which="minor", labelsize=7)
            axes.legend(fontsize=8)
        else:
            axes.text(0.5, 0.5, "no network with a published top-1 ran", ha="center", va="center",
                      transform=axes.transAxes)
        devices = ", ".join(sorted({f"{r.device} {r.dtype}" for r in rows}))
        axes.set(xlabel=xlabel, ylabel="ImageNet top-1 (%)", title=f"accuracy vs {quantity} ({devices})")
        axes.grid(True, which="both", alpha=0.3)
        figure.tight_layout()
        path = out_dir / filename
        figure.savefig(path)
        paths.append(path)
    return paths


def output_folder(out_dir: Path | str) -> Path:
    """``out_dir``, created if needed; call it before a long run so a bad path fails first."""
    out_dir = Path(out_dir)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise ConfigError(f"cannot create the output folder {out_dir}: {error.strerror}") from None
    return out_dir


def write_report(rows: Sequence[BenchRow], out_dir: Path | str) -> list[Path]:
    """``bench.csv``, ``bench.md`` and the three plots in ``out_dir`` (created if needed)."""
    out_dir = output_folder(out_dir)
    return [write_csv(rows, out_dir / "bench.csv"), write_markdown(rows, out_dir / "bench.md"),
            *plot_efficiency(rows, out_dir)]
