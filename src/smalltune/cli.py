"""The `smalltune` command: a thin shell over the Python API (each command parses arguments and calls one function)."""

from __future__ import annotations

import logging
import sys
import time
from importlib import resources
from pathlib import Path

import typer
from rich.console import Console
from rich.logging import RichHandler
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from smalltune.config import load_config
from smalltune.errors import SmalltuneError

app = typer.Typer(help="Fine-tune a small private model for one narrow task, and run it fast.", no_args_is_help=True)
data_app = typer.Typer(help="Inspect and convert data files.", no_args_is_help=True)
app.add_typer(data_app, name="data")
console = Console()

TaskFile = typer.Argument(..., exists=False, help="The task's YAML file.")


def _progress() -> Progress:
    return Progress(
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
        TextColumn("{task.fields[rate]}"), TimeRemainingColumn(), console=console,
    )


class _RecordBar:
    """A progress bar over records with records/s, shown from the first finished batch until the block ends."""

    def __init__(self, label: str, total: int | None = None):
        self.progress = _progress()
        self.bar = self.progress.add_task(label, total=total, rate="")
        self.started = 0.0  # set when the first batch call arrives
        self.done = 0

    def __enter__(self) -> _RecordBar:
        return self

    def __exit__(self, *exc) -> None:
        self.progress.stop()

    def start(self, total: int) -> None:
        self.progress.update(self.bar, total=total)

    def advance(self, n: int) -> None:
        """Called with 0 when generation starts (the clock starts then) and with each finished batch's size."""
        if not self.progress.live.is_started:
            self.progress.start()
            self.started = time.perf_counter()
        self.done += n
        rate = self.done / max(time.perf_counter() - self.started, 1e-9)
        self.progress.update(self.bar, advance=n, rate=f"{rate:.2f} rec/s")


@app.command()
def init(
    kind: str = typer.Option("extract", help="extract | classify | chat"),
    out: Path = typer.Option(Path("task.yaml"), help="Where to write the task file."),
) -> None:
    """Write a commented example task file to start from."""
    if out.exists():
        raise SmalltuneError(f"{out} exists; choose another --out or delete it")
    text = resources.files("smalltune.recipes").joinpath("complaints.yaml").read_text(encoding="utf-8")
    if kind != "extract":
        text = _example_for(kind, text)
    out.write_text(text, encoding="utf-8")
    console.print(f"wrote {out}: edit data paths and fields, then `smalltune data check {out}`")


def _example_for(kind: str, extract_yaml: str) -> str:
    """The extract example turned into a classify or chat example."""
    head, _, rest = extract_yaml.partition("fields:")
    rest = rest[rest.index("data:"):]
    blocks = {
        "classify": "labels: [体育, 财经, 科技, 娱乐]        # classify: the candidate labels\n",
        "chat": "",
    }
    if kind not in blocks:
        raise SmalltuneError(f"--kind {kind!r}: use extract, classify or chat")
    head = head.replace("kind: extract", f"kind: {kind}").replace("name: complaints", f"name: my-{kind}")
    instruction = "instruction: 从下面的客户投诉中抽取投诉人的信息。"
    head = head.replace(instruction, "instruction: 判断新闻标题的类别。" if kind == "classify" else "system: 你是一位耐心的客服。")
    return head + blocks[kind] + rest


@data_app.command("check")
def data_check(task_file: Path = TaskFile) -> None:
    """Count records, find duplicates and invalid records (file:line), and show token lengths."""
    from smalltune.datacheck import check_data

    report = check_data(load_config(task_file))
    table = Table(title=f"data check: {task_file}")
    for column in ("split", "records"):
        table.add_column(column)
    for split, count in report.counts.items():
        table.add_row(split, str(count))
    console.print(table)
    if report.token_percentiles:
        console.print("prompt+answer tokens p50/p90/p99/max: " + " / ".join(str(v) for v in report.token_percentiles.values()))
    for a, b in report.duplicates:
        console.print(f"[yellow]duplicate[/]: {b} repeats {a}")
    for problem in report.problems:
        console.print(f"[red]invalid[/]: {problem}")
    if report.problems:
        raise typer.Exit(1)


@app.command()
def train(task_file: Path = TaskFile, resume: bool = typer.Option(False, help="Continue from the last checkpoint.")) -> None:
    """Fine-tune the task's model with LoRA; writes the run directory."""
    from smalltune.train import train as run_training

    run_dir = run_training(load_config(task_file), resume=resume)
    console.print(f"run directory: {run_dir}")


def _with_interval(result, metric: str) -> str:
    lo, hi = result.intervals.get(metric, (None, None))
    value = f"{result.metrics[metric]:.3f}"
    return value if lo is None or lo == hi else f"{value} [{lo:.2f}, {hi:.2f}]"


def print_results(results: dict, title: str) -> None:
    """The side-by-side table of metrics per system, with 95% bootstrap intervals."""
    table = Table(title=title)
    table.add_column("metric")
    for name in results:
        table.add_column(name, justify="right")
    first = next(iter(results.values()))
    for metric in first.metrics:
        table.add_row(metric, *(_with_interval(r, metric) for r in results.values()))
    table.add_row("records/s", *(f"{r.records_per_second:.2f}" for r in results.values()))
    console.print(table)


@app.command("eval")
def eval_(
    run_dir: Path = typer.Argument(..., help="A run directory (runs/<name>)."),
    limit: int = typer.Option(None, help="Score only the first N test records."),
) -> None:
    """Score the untuned and the fine-tuned model on the held-out records, side by side."""
    from smalltune.evaluate import evaluate_run

    with _RecordBar("eval") as bar:
        results = evaluate_run(run_dir, limit=limit, on_batch=bar.advance)
    print_results(results, f"eval: {run_dir}")
    console.print(f"wrote {run_dir / 'metrics.json'} and {run_dir / 'predictions.jsonl'}")


@app.command()
def predict(
    run_dir: Path = typer.Argument(..., help="A run directory (runs/<name>)."),
    input_file: Path = typer.Argument(..., help="Records to answer (JSON, JSONL or CSV in the task's format)."),
    out: Path = typer.Option(..., "-o", "--out", help="JSONL output: id, answer, parsed value, error."),
) -> None:
    """Answer every record of a file with the fine-tuned model."""
    from smalltune.predict import predict_file

    with _RecordBar("predict") as bar:
        count = predict_file(run_dir, input_file, out, on_start=bar.start, on_batch=bar.advance)
    console.print(f"wrote {count} answers to {out}")


@app.command()
def demo(
    work_dir: Path = typer.Option(Path("runs/demo"), help="Where the data, the run and the results go."),
    train_records: int = typer.Option(320, help="Synthetic training records."),
    test_records: int = typer.Option(100, help="Held-out records (unseen templates, topics and noise)."),
) -> None:
    """The whole job on the default model: make complaint data, measure, fine-tune, measure again."""
    from smalltune.demo import run_demo

    started = time.perf_counter()
    with _RecordBar("eval: untuned, then fine-tuned", total=2 * test_records) as bar:
        results = run_demo(work_dir, train_records, test_records, log=console.print, on_batch=bar.advance)
    print_results(results, f"held-out complaints ({test_records} records)")
    console.print(f"total time: {(time.perf_counter() - started) / 60:.1f} min; results in {work_dir}")


def main() -> None:
    """Entry point: user errors print one clear message and exit 2, without a traceback."""
    logging.basicConfig(level=logging.INFO, format="%(message)s", handlers=[RichHandler(console=console, show_path=False)])
    try:
        app()
    except SmalltuneError as exc:
        console.print(f"[bold red]error:[/] {exc}", soft_wrap=True)
        sys.exit(2)


if __name__ == "__main__":
    main()
