"""The report of an evaluated run: report.md and a self-contained report.html.

Everything comes from files in the run directory (metrics.json, predictions.jsonl, train_log.jsonl), so a
report can be rebuilt without the model. The HTML needs no network: CSS is inline and plots are inline SVG
drawn by matplotlib with text kept as text (the browser's fonts render Chinese labels).
"""

from __future__ import annotations

import difflib
import html
import io
import json
import time
import warnings
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from smalltune.io import atomic_write_text, read_jsonl
from smalltune.registry import KINDS
from smalltune.runs import RunDir
from smalltune.tasks.base import ReportSection, ReportTable, TaskKind

WORST_ERRORS = 10
UNTUNED, TUNED = "untuned", "fine-tuned"  # the base and the tuned model, as `evaluate` names them

_CSS = """
body { font-family: "Noto Sans CJK SC", "WenQuanYi Micro Hei", "PingFang SC", "Microsoft YaHei", sans-serif;
       margin: 2rem auto; max-width: 1100px; color: #1f2328; line-height: 1.45; padding: 0 1rem; }
h1 { font-size: 1.6rem; margin-bottom: 0.2rem; } h2 { margin-top: 2rem; border-bottom: 1px solid #d0d7de; }
.meta { color: #59636e; }
table { border-collapse: collapse; margin: 0.6rem 0; font-size: 0.92rem; }
th, td { border: 1px solid #d0d7de; padding: 0.3rem 0.55rem; vertical-align: top; }
th { background: #f6f8fa; text-align: left; }
td.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
tr.headline td, tr.headline th { font-weight: 700; background: #fff8c5; }
.ci { color: #59636e; font-size: 0.82em; }
td.text { white-space: pre-wrap; max-width: 30rem; }
del { background: #ffd7d5; color: #82071e; } ins { background: #ccffd8; color: #055d20; text-decoration: none; }
figure.plot { margin: 0.8rem 0; } figure.plot svg { max-width: 100%; height: auto; }
figcaption { color: #59636e; font-size: 0.9rem; }
"""


@dataclass
class RunResults:
    """What the report shows, read from the run directory."""

    run: RunDir
    summary: dict[str, Any]  # metrics.json
    predictions: list[dict[str, Any]]  # predictions.jsonl
    train_log: list[dict[str, Any]]  # train_log.jsonl (empty when the run has none)

    @property
    def systems(self) -> dict[str, dict[str, Any]]:
        return self.summary["systems"]

    @property
    def headline(self) -> str:
        return self.summary["headline"]

    @property
    def kind(self) -> type[TaskKind]:
        """The task kind's class: it names the bars and the sections of its own."""
        return KINDS.get(self.summary["kind"])

    def sections(self) -> list[ReportSection]:
        return self.kind.report_sections(self.summary, self.predictions)


def load_results(run_dir: Path | RunDir) -> RunResults:
    """Read metrics.json, predictions.jsonl and, when present, train_log.jsonl."""
    run = RunDir.at(run_dir)
    summary = json.loads(run.metrics.read_text(encoding="utf-8"))
    log = read_jsonl(run.train_log) if run.train_log.is_file() else []
    return RunResults(run, summary, read_jsonl(run.predictions), log)


def write_report(run_dir: Path | RunDir) -> tuple[Path, Path]:
    """Write report.md and report.html into the run directory; returns their paths."""
    results = load_results(run_dir)
    atomic_write_text(results.run.report_md, render_markdown(results))
    atomic_write_text(results.run.report_html, render_html(results))
    return results.run.report_md, results.run.report_html


# ---- shared views of the results -------------------------------------------------------------


NO_VALUE = "–"  # a metric a system has none of (e.g. the calibration error of answers without probabilities)


def value_and_interval(value: float | None, interval: tuple[float, float] | list[float] | None) -> tuple[str, str]:
    """A metric as shown everywhere: the value (3 decimals) and its 95% interval ('' when it is a single point);
    NO_VALUE when the system has no such metric."""
    if value is None:
        return NO_VALUE, ""
    lo, hi = interval or (None, None)
    return f"{value:.3f}", "" if lo is None or lo == hi else f"[{lo:.2f}, {hi:.2f}]"


def metric_names(metrics: Iterable[dict[str, float]]) -> list[str]:
    """Every metric any system has, in the order they first appear."""
    return list(dict.fromkeys(name for system in metrics for name in system))


def _with_interval(system: dict[str, Any], metric: str) -> tuple[str, str]:
    return value_and_interval(system["metrics"].get(metric), system["ci95"].get(metric))


def _hours(hours: float) -> str:
    """Hours with as many decimals as a small number needs."""
    return f"{hours:.0f}" if hours >= 10 else f"{hours:.1f}" if hours >= 0.1 else f"{hours:.4f}"


def _throughput_rows(results: RunResults) -> list[list[str]]:
    return [
        [name, f"{s['records_per_second']:.2f}", _hours(s["hours_per_million_records"]), f"{s['seconds']:.1f}",
         str(s["new_tokens"])]
        for name, s in results.systems.items()
    ]


_THROUGHPUT_HEAD = ["system", "records/s", "hours per million records", "seconds", "new tokens"]


def _train_curves(log: list[dict[str, Any]], headline: str) -> dict[str, dict[int, float]]:
    """Per logged key (train loss, validation loss, validation headline metric): step -> value (last wins)."""
    keys = {"training loss": "loss", "validation loss": "eval_loss", f"validation {headline}": f"eval_{headline}"}
    curves = {label: {e["step"]: e[key] for e in log if key in e} for label, key in keys.items()}
    return {label: dict(sorted(points.items())) for label, points in curves.items() if points}


def _worst(results: RunResults, system: str) -> list[dict[str, Any]]:
    """The records the system did worst on (score below 1), lowest score first, at most WORST_ERRORS."""
    wrong = [p for p in results.predictions if p["scores"][system] < 1]
    return sorted(wrong, key=lambda p: p["scores"][system])[:WORST_ERRORS]


def _tuned_name(results: RunResults) -> str:
    """The fine-tuned system, or the last one when a run has none."""
    return TUNED if TUNED in results.systems else list(results.systems)[-1]


# ---- markdown --------------------------------------------------------------------------------


def _md_cell(text: Any) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ⏎ ")


def _md_table(head: list[str], rows: list[list[Any]]) -> str:
    lines = ["| " + " | ".join(map(_md_cell, head)) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(map(_md_cell, row)) + " |" for row in rows]
    return "\n".join(lines)


def render_markdown(results: RunResults) -> str:
    """The report as Markdown: the same tables as the HTML, without plots."""
    summary, systems = results.summary, results.systems
    headline_rows = [
        [f"**{metric}**" if metric == results.headline else metric,
         *(" ".join(filter(None, _with_interval(s, metric))) for s in systems.values())]
        for metric in metric_names(s["metrics"] for s in systems.values())
    ]
    parts = [
        f"# smalltune report: {summary['task']}",
        f"{summary['kind']} task, {summary['test_records']} held-out records; 95% bootstrap intervals in brackets.",
        "## Scores", _md_table(["metric", *systems], headline_rows),
        "## Throughput", "Measured during this evaluation (one process, this machine).",
        _md_table(_THROUGHPUT_HEAD, _throughput_rows(results)),
        "## Training", _md_training(results),
    ]
    for section in results.sections():
        parts += [f"## {section.title}", section.note, *(_md_section_table(table) for table in section.tables)]
    tuned = _tuned_name(results)
    parts += [f"## Worst errors of {tuned}", _md_errors(results, tuned)]
    return "\n\n".join(parts) + "\n"


def _md_training(results: RunResults) -> str:
    curves = _train_curves(results.train_log, results.headline)
    if not curves:
        return "No training log (train_log.jsonl) in this run directory."
    lines = []
    for label, points in curves.items():
        steps = list(points)
        lines.append(f"- {label}: {points[steps[0]]:.4f} at step {steps[0]} → {points[steps[-1]]:.4f} at step {steps[-1]}")
    return "\n".join(lines)


def _md_section_table(table: ReportTable) -> str:
    body = _md_table(table.head, table.rows)
    return f"**{table.caption}**\n\n{body}" if table.caption else body


def _md_errors(results: RunResults, system: str) -> str:
    worst = _worst(results, system)
    if not worst:
        return "None: every answer matched the reference."
    rows = [[p["id"], f"{p['scores'][system]:.2f}", p["reference_answer"], p["answers"][system]] for p in worst]
    return _md_table(["id", "score", "reference", "answer"], rows)


# ---- plots -----------------------------------------------------------------------------------


def _figure(width: float, height: float):
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), layout="constrained")


def _svg(fig, salt: str) -> str:
    """The figure as an inline <svg> element; text stays text so the page's CJK fonts draw it."""
    import matplotlib

    buffer = io.StringIO()
    style = {"svg.fonttype": "none", "svg.hashsalt": salt, "font.family": "sans-serif",
             "font.sans-serif": ["Noto Sans CJK SC", "WenQuanYi Micro Hei", "DejaVu Sans"]}
    with matplotlib.rc_context(style), warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Glyph .* missing from font")
        fig.savefig(buffer, format="svg")
    text = buffer.getvalue()
    return text[text.index("<svg"):]


def _loss_plot(curves: dict[str, dict[int, float]], headline: str) -> str:
    from matplotlib.ticker import MaxNLocator

    losses = {label: points for label, points in curves.items() if "loss" in label}
    metric = {label: points for label, points in curves.items() if "loss" not in label}
    fig = _figure(10, 3.4)
    axes = fig.subplots(1, 2 if metric else 1, squeeze=False)[0]
    for label, points in losses.items():
        axes[0].plot(list(points), list(points.values()), marker="o" if "validation" in label else None, label=label)
    axes[0].set(xlabel="step", ylabel="loss", title="loss")
    axes[0].legend()
    for label, points in metric.items():
        axes[1].plot(list(points), list(points.values()), marker="o", color="tab:green", label=label)
        axes[1].set(xlabel="step", ylabel=headline, title=label, ylim=(0, 1.05))
    for ax in axes:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    return _svg(fig, "loss")


def _bars_plot(title: str, groups: list[str], series: dict[str, list[float]]) -> str:
    """Grouped bars: one group per field/label/score, one bar per system."""
    fig = _figure(min(12.0, max(6.0, 1.0 + len(groups) * (0.4 + 0.35 * len(series)))), 3.6)
    ax = fig.subplots()
    width = 0.8 / max(len(series), 1)
    for i, (name, values) in enumerate(series.items()):
        ax.bar([g + i * width for g in range(len(groups))], values, width, label=name)
    ax.set_xticks([g + 0.4 - width / 2 for g in range(len(groups))], groups)
    ax.set(ylim=(0, 1.05))
    fig.legend(loc="outside upper center", ncols=min(len(series), 5), frameon=False)
    return _svg(fig, "bars")


def _reliability_plot(points: dict[str, list[dict[str, float]]]) -> str:
    """A reliability diagram: per system, each confidence bin's accuracy against its mean confidence (marker area
    by the bin's answers), over the diagonal of perfect calibration."""
    fig = _figure(5.2, 4.4)
    ax = fig.subplots()
    ax.plot([0, 1], [0, 1], linestyle="--", color="grey", linewidth=1, label="calibrated")
    for name, bins in points.items():
        total = sum(b["count"] for b in bins) or 1
        (line,) = ax.plot([b["confidence"] for b in bins], [b["accuracy"] for b in bins], marker="o", markersize=3,
                          label=name)
        ax.scatter([b["confidence"] for b in bins], [b["accuracy"] for b in bins],
                   s=[400 * b["count"] / total for b in bins], alpha=0.25, color=line.get_color())
    ax.set(xlabel="confidence (the probability of the answer)", ylabel="accuracy", xlim=(0, 1), ylim=(0, 1.02))
    ax.legend(fontsize="small")
    return _svg(fig, "reliability")


# ---- html ------------------------------------------------------------------------------------


def _esc(text: Any) -> str:
    return html.escape(str(text))


def _html_table(table_id: str, head: list[str], rows: list[str]) -> str:
    header = "".join(f"<th>{_esc(h)}</th>" for h in head)
    return f'<table id="{table_id}"><thead><tr>{header}</tr></thead><tbody>{"".join(rows)}</tbody></table>'


def _numeric_rows(rows: list[list[str]]) -> list[str]:
    """Table rows whose first cell names the row and whose other cells are numbers."""
    return ["<tr>" + f"<th>{_esc(row[0])}</th>" + "".join(f'<td class="num">{c}</td>' for c in row[1:]) + "</tr>"
            for row in rows]


def _char_diff(reference: str, answer: str) -> str:
    """Reference and answer as one line: text only in the reference in <del>, only in the answer in <ins>."""
    out = []
    for op, a0, a1, b0, b1 in difflib.SequenceMatcher(None, reference, answer, autojunk=False).get_opcodes():
        if op == "equal":
            out.append(_esc(reference[a0:a1]))
            continue
        if a1 > a0:
            out.append(f"<del>{_esc(reference[a0:a1])}</del>")
        if b1 > b0:
            out.append(f"<ins>{_esc(answer[b0:b1])}</ins>")
    return "".join(out)


def render_html(results: RunResults) -> str:
    """The report as one HTML page with inline CSS and SVG plots."""
    summary = results.summary
    sections = [
        _html_scores(results),
        _html_throughput(results),
        _html_training(results),
        _html_groups(results),
        _html_reliability(results),
    ]
    sections += [_html_section(section) for section in results.sections()]
    sections.append(_html_errors(results, _tuned_name(results)))
    made = time.strftime("%Y-%m-%d %H:%M")
    return (
        f'<!DOCTYPE html><html lang="zh"><head><meta charset="utf-8">'
        f"<title>smalltune report: {_esc(summary['task'])}</title><style>{_CSS}</style></head><body>"
        f"<h1>smalltune report: {_esc(summary['task'])}</h1>"
        f'<p class="meta">{_esc(summary["kind"])} task · {summary["test_records"]} held-out records · '
        f"{len(results.systems)} systems · made {made} from {_esc(results.run.path)}</p>"
        + "".join(sections)
        + "</body></html>\n"
    )


def _html_scores(results: RunResults) -> str:
    systems = results.systems
    rows = []
    for metric in metric_names(s["metrics"] for s in systems.values()):
        cells = "".join(
            f'<td class="num">{value} <span class="ci">{interval}</span></td>'
            for value, interval in (_with_interval(s, metric) for s in systems.values())
        )
        css = ' class="headline"' if metric == results.headline else ""
        rows.append(f"<tr{css}><th>{_esc(metric)}</th>{cells}</tr>")
    return ("<h2>Scores</h2><p>Every system on the same held-out records; 95% bootstrap intervals in grey. "
            f"Headline metric: <b>{_esc(results.headline)}</b>.</p>" + _html_table("scores", ["metric", *systems], rows))


def _html_throughput(results: RunResults) -> str:
    rows = _numeric_rows(_throughput_rows(results))
    tuned = results.systems.get(TUNED)
    line = ""
    if tuned:
        line = (f'<p id="throughput-line">The fine-tuned model answered {tuned["records_per_second"]:.2f} records/s '
                f"here: about {_hours(tuned['hours_per_million_records'])} hours per million records "
                f"(batch size {results.summary['infer']['batch_size']}, one process).</p>")
    return "<h2>Throughput</h2>" + line + _html_table("throughput", _THROUGHPUT_HEAD, rows)


def _html_training(results: RunResults) -> str:
    curves = _train_curves(results.train_log, results.headline)
    if not curves:
        return "<h2>Training</h2><p>No training log (train_log.jsonl) in this run directory.</p>"
    caption = "Training and validation loss"
    if f"validation {results.headline}" in curves:
        caption += ", and the task's headline metric on the validation records at each evaluation"
    return ('<h2>Training</h2><figure class="plot" id="plot-loss">' + _loss_plot(curves, results.headline)
            + f"<figcaption>{caption}.</figcaption></figure>")


def _html_groups(results: RunResults) -> str:
    bars = results.kind.report_bars(results.summary)
    return (f"<h2>{_esc(bars.title.capitalize())}</h2>" + '<figure class="plot" id="plot-groups">'
            + _bars_plot(bars.title, bars.groups, bars.series) + f"<figcaption>{_esc(bars.title)}, per system</figcaption></figure>")


def _html_reliability(results: RunResults) -> str:
    """The reliability diagram of the systems whose answers carry probabilities ('' when none do)."""
    points = results.kind.report_calibration(results.summary)
    if not points:
        return ""
    errors = ", ".join(f"{name} {results.systems[name]['metrics']['ece']:.3f}" for name in points
                       if "ece" in results.systems[name]["metrics"])
    return ('<h2>Reliability</h2><figure class="plot" id="plot-reliability">' + _reliability_plot(points)
            + "<figcaption>Accuracy of the answers in each confidence bin (10 bins) against their mean confidence; "
            f"points on the diagonal are calibrated. Expected calibration error: {_esc(errors)}.</figcaption></figure>")


def _html_rows(table: ReportTable) -> list[str]:
    """Rows of a section table in its style: numbers, shaded counts (heat), or wrapped text."""
    if table.style == "text":
        return ["<tr>" + "".join(f'<td class="text">{_esc(v)}</td>' for v in row) + "</tr>" for row in table.rows]
    if table.style == "numeric":
        return _numeric_rows(table.rows)
    peak = max((c for row in table.rows for c in row[1:]), default=0) or 1
    return [f"<tr><th>{_esc(row[0])}</th>"
            + "".join(f'<td class="num" style="background: rgba(9,105,218,{0.75 * c / peak:.2f})">{c}</td>' for c in row[1:])
            + "</tr>" for row in table.rows]


def _html_section(section: ReportSection) -> str:
    """A kind's own section: each table's id is the section's anchor (numbered when it has several)."""
    parts = [f"<h2>{_esc(section.title)}</h2><p>{_esc(section.note)}</p>"]
    for i, table in enumerate(section.tables):
        table_id = section.anchor if len(section.tables) == 1 else f"{section.anchor}-{i}"
        caption = f"<h3>{_esc(table.caption)}</h3>" if table.caption else ""
        parts.append(caption + _html_table(table_id, table.head, _html_rows(table)))
    return "".join(parts)


def _html_errors(results: RunResults, system: str) -> str:
    worst = _worst(results, system)
    head = f"<h2>Worst errors of {_esc(system)}</h2>"
    if not worst:
        return head + "<p>None: every answer matched the reference.</p>"
    rows = [
        f"<tr><th>{_esc(p['id'])}</th><td class=\"num\">{p['scores'][system]:.2f}</td>"
        f'<td class="text">{_esc(p["input"])}</td>'
        f'<td class="text diff">{_char_diff(p["reference_answer"], p["answers"][system])}</td></tr>'
        for p in worst
    ]
    return (head + "<p>Lowest-scoring records. In the diff, <del>struck text</del> is in the reference only and "
            "<ins>green text</ins> in the answer only.</p>"
            + _html_table("errors", ["id", "score", "input", "reference → answer"], rows))
