"""The report of a ship folder: ``report.md`` and a self-contained ``report.html`` (plots embedded).

What was shipped, fp32 against shipped (top-1, agreement, logit SQNR, latency, throughput,
file size) on this machine, every recipe tried, the confusion matrix, the most confident
mistakes, the command and the library versions.
"""

from __future__ import annotations

import base64
import html
import io
import math
from pathlib import Path

import numpy as np
import torch

from ..deploy.compare import row_cells, row_headers
from ..deploy.environment import describe_cpu
from ..files import atomic_write
from ..table import format_markdown
from ..train.reporting import plot_confusion
from .plan import ShipOptions, ShipResult, top1_floor

MISTAKES_SHOWN = 10
ATTEMPT_HEADERS = ["recipe", "top-1 %", "drop (points)", "agreement %", "SQNR dB", "shipped"]
MISTAKE_HEADERS = ["image", "true", "predicted", "probability"]


def confusion_matrix(targets: np.ndarray, logits: np.ndarray, classes: int) -> np.ndarray:
    """Counts of (true class, predicted class)."""
    matrix = np.zeros((classes, classes), dtype=np.int64)
    np.add.at(matrix, (targets, logits.argmax(1)), 1)
    return matrix


def confident_mistakes(result: ShipResult, eval_dir: str | Path, count: int = MISTAKES_SHOWN) -> list[list[str]]:
    """The shipped model's ``count`` wrong answers it was surest of: image, true, predicted, probability."""
    evaluation = result.evaluation
    logits = evaluation.shipped.astype(np.float64)
    probabilities = np.exp(logits - logits.max(1, keepdims=True))
    probabilities /= probabilities.sum(1, keepdims=True)
    predicted = probabilities.argmax(1)
    wrong = np.flatnonzero(predicted != evaluation.targets)
    ranked = wrong[np.argsort(-probabilities[wrong, predicted[wrong]], kind="stable")][:count]
    names = evaluation.class_names
    return [[_relative(evaluation.files[i], eval_dir), names[evaluation.targets[i]], names[predicted[i]],
             f"{probabilities[i, predicted[i]]:.3f}"] for i in ranked]


def _relative(path: Path, root: str | Path) -> str:
    try:
        return str(Path(path).relative_to(root))
    except ValueError:
        return str(path)


def attempt_rows(result: ShipResult) -> list[list[str]]:
    return [[a.recipe.describe(), f"{100 * a.accuracy.top1:.2f}", f"{a.drop_points:.2f}",
             f"{100 * a.accuracy.agreement:.2f}",
             f"{a.accuracy.sqnr_db:.1f}" if math.isfinite(a.accuracy.sqnr_db) else "-",
             "yes" if a.accepted else "no"] for a in result.attempts]


def _timing_note(result: ShipResult) -> str:
    """How the speeds were taken, with the load average meanwhile (empty when not measured)."""
    speed = result.reference.speed
    if speed is None:
        return ""
    load = f"; load average {speed.load_average:.1f} while timing" if speed.load_average is not None else ""
    return (f"{load}. fp32 and shipped were timed in turns, round after round ({speed.latency.iterations} rounds at "
            f"batch 1, {speed.throughput.iterations} at batch {speed.throughput.batch_size}): medians with their "
            "p10-p90 over the rounds")


def _latency_plot(result: ShipResult) -> bytes | None:
    from matplotlib.figure import Figure

    rows = [r for r in (result.reference, result.shipped) if r.speed]
    if not rows:
        return None
    figure = Figure(figsize=(6, 2.6), layout="constrained")
    axes = figure.subplots()
    medians = [r.speed.latency.median_ms for r in rows]
    spread = [[m - (r.speed.latency.p10_ms or m) for r, m in zip(rows, medians, strict=True)],
              [r.speed.latency.p90_ms - m for r, m in zip(rows, medians, strict=True)]]
    axes.barh([r.name for r in rows], medians, xerr=spread, capsize=3, color=["#999999", "#1f77b4"])
    axes.invert_yaxis()
    axes.set(xlabel="median latency at batch 1 (ms), bars p10-p90 over rounds", title=f"latency on {describe_cpu()}")
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100)
    return buffer.getvalue()


def write_reports(result: ShipResult, options: ShipOptions, eval_dir: str | Path, out: Path) -> None:
    """Write ``confusion.png``, ``report.md`` and ``report.html`` into ``out``, the ship folder being built."""
    evaluation = result.evaluation
    matrix = confusion_matrix(evaluation.targets, evaluation.shipped, len(evaluation.class_names))
    plot_confusion(torch.from_numpy(matrix), evaluation.class_names, out / "confusion.png",
                   title=f"shipped {result.recipe.target.name} on {Path(eval_dir).name}")
    latency_png = _latency_plot(result)
    manifest = result.manifest
    files = sorted(p.name for p in out.iterdir() if p.is_file() and not p.name.startswith("."))
    sizes = ", ".join(f"{name} ({(out / name).stat().st_size / 1e6:.2f} MB)" for name in files
                      if name.startswith("model."))
    shipped = result.shipped.accuracy
    floor = top1_floor(options, len(evaluation.class_names))
    summary = (f"{result.model_name} shipped as **{result.recipe.describe()}** (runtime {manifest['runtime']}, "
               f"precision {manifest['precision']}, input {manifest['resolution']} px). Top-1 on "
               f"{shipped.count} images of `{eval_dir}`: {100 * shipped.top1:.2f}% against "
               f"{100 * result.reference.accuracy.top1:.2f}% in fp32 (drop {result.attempts[-1].drop_points:.2f} "
               f"points, limit {options.max_drop:g}); {100 * shipped.agreement:.2f}% of the predictions equal "
               f"fp32's (limit {options.min_agreement:g}%); the top-1 floor was {floor:.2f}%.")
    if "conversion" in manifest:  # an edge file (effnet.deploy.edge)
        summary += " " + edge_summary(manifest)
    comparison = [result.reference, result.shipped]
    headers, cells = row_headers(comparison), [row_cells(r) for r in comparison]
    mistakes = confident_mistakes(result, eval_dir)
    versions = ", ".join(f"{k} {v}" for k, v in manifest["versions"].items())
    machine = f"{describe_cpu()}; {options.threads or 'all'} runtime threads" + _timing_note(result)
    command = options.command or "(called from Python)"
    markdown = "\n".join([
        f"# Ship report: {result.model_name} -> {result.recipe.target.name}", "", summary, "",
        f"Files: {sizes}; `predict.py` classifies images with only {manifest['runtime']}, numpy and Pillow.", "",
        "## fp32 against shipped", "", f"Measured on {machine}.", "", format_markdown(headers, cells), "",
        "## Recipes tried", "", format_markdown(ATTEMPT_HEADERS, attempt_rows(result)), "",
        "## Confusion matrix (shipped)", "", "![confusion matrix](confusion.png)", "",
        "## Most confident mistakes (shipped)", "",
        format_markdown(MISTAKE_HEADERS, mistakes) if mistakes else "None: every image was classified correctly.", "",
        "## Reproduce", "", f"```console\n$ {command}\n```", "", f"Versions: {versions}.", ""])
    atomic_write(out / "report.md", lambda temp: temp.write_text(markdown))
    confusion_png = (out / "confusion.png").read_bytes()
    page = "\n".join([
        "<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
        f"<title>Ship report: {html.escape(result.model_name)}</title>",
        "<style>body{font-family:sans-serif;max-width:60rem;margin:2rem auto;line-height:1.4}"
        "table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:.2rem .5rem;text-align:right}"
        "td:first-child,th:first-child{text-align:left}code,pre{background:#f4f4f4}</style></head><body>",
        f"<h1>Ship report: {html.escape(result.model_name)} &rarr; {html.escape(result.recipe.target.name)}</h1>",
        f"<p>{html.escape(summary).replace('**', '')}</p>",
        f"<p>Files: {html.escape(sizes)}.</p>",
        "<h2>fp32 against shipped</h2>", f"<p>Measured on {html.escape(machine)}.</p>", _html_table(headers, cells),
        _html_image(latency_png, "latency") if latency_png else "",
        "<h2>Recipes tried</h2>", _html_table(ATTEMPT_HEADERS, attempt_rows(result)),
        "<h2>Confusion matrix (shipped)</h2>", _html_image(confusion_png, "confusion matrix"),
        "<h2>Most confident mistakes (shipped)</h2>",
        _html_table(MISTAKE_HEADERS, mistakes) if mistakes else "<p>None: every image was classified correctly.</p>",
        "<h2>Reproduce</h2>", f"<pre>$ {html.escape(command)}</pre>", f"<p>Versions: {html.escape(versions)}.</p>",
        "</body></html>", ""])
    atomic_write(out / "report.html", lambda temp: temp.write_text(page))


def edge_summary(manifest: dict) -> str:
    """An edge file's input tensor, conversion time and (INT8) the ops left computing in float."""
    given, conversion = manifest["input"], manifest["conversion"]
    text = (f"Input: {given['dtype']} {given['layout']} {given['shape']}"
            + (f" (scale {given['scale']:.6g}, zero point {given['zero_point']})" if "scale" in given else "")
            + f"; converted in {conversion['seconds']:g} s.")
    if manifest["precision"] == "int8" and manifest["runtime"] == "litert":
        islands = conversion["float_ops"]
        text += (" Ops computing in float: " + ", ".join(f"{op} x{n}" for op, n in islands.items()) + "."
                 if islands else " Integer end to end: no op computes in float.")
    return text


def _html_table(headers: list[str], rows: list[list[str]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _html_image(png: bytes, alt: str) -> str:
    return f'<p><img alt="{html.escape(alt)}" src="data:image/png;base64,{base64.b64encode(png).decode()}"></p>'
