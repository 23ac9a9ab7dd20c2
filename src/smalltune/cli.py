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
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from smalltune.config import load_config
from smalltune.errors import SmalltuneError
from smalltune.registry import AUTO_ENGINE, ENGINES, KINDS

app = typer.Typer(help="Fine-tune a small private model for one narrow task, and run it fast.", no_args_is_help=True)
data_app = typer.Typer(help="Inspect and convert data files.", no_args_is_help=True)
app.add_typer(data_app, name="data")
console = Console(width=None if sys.stdout.isatty() else 160)  # logs and pipes get the whole table, not 80 columns

TaskFile = typer.Argument(..., exists=False, help="The task's YAML file.")
_SHOWN = 20  # records listed by name in a warning; the rest are counted
EngineName = typer.Option(None, "--engine", show_default=f"the task file's infer.engine, {AUTO_ENGINE}",
                          help=f"{AUTO_ENGINE} | {' | '.join(ENGINES.names())} (vLLM in its own environment: `make setup-vllm`).")


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
    kind: str = typer.Option("extract", help=" | ".join(KINDS.names())),
    out: Path = typer.Option(Path("task.yaml"), help="Where to write the task file."),
) -> None:
    """Write a commented example task file to start from."""
    if out.exists():
        raise SmalltuneError(f"{out} exists; choose another --out or delete it")
    out.write_text(example_task_file(kind), encoding="utf-8")
    shown = escape(str(out))
    console.print(f"wrote {shown}: edit data paths and the task's keys, then `smalltune data check {shown}`")


def example_task_file(kind: str) -> str:
    """A commented task file for `kind`: the kind's own keys (`TaskKind.example`) in the complaints recipe's frame."""
    recipe = resources.files("smalltune.recipes").joinpath("complaints.yaml").read_text(encoding="utf-8")
    common = recipe[recipe.index("\ndata:") + 1:]
    head = (f"# smalltune task file for a {kind} task. Every key is optional unless marked required.\n"
            f"name: my-{kind}                   # required: the run directory is <output_dir>/<name>\n"
            f"kind: {kind}                     # required: {' | '.join(KINDS.names())}\n")
    return head + KINDS.get(kind).example + common


@data_app.command("check")
def data_check(task_file: Path = TaskFile) -> None:
    """Count records, find duplicates and invalid records (file:line), and show token lengths."""
    from smalltune.training.datacheck import check_data

    report = check_data(load_config(task_file))
    table = Table(title=f"data check: {escape(str(task_file))}")
    for column in ("split", "records"):
        table.add_column(column)
    for split, count in report.counts.items():
        table.add_row(split, str(count))
    console.print(table)
    if report.token_percentiles:
        console.print("prompt+answer tokens p50/p90/p99/max: " + " / ".join(str(v) for v in report.token_percentiles.values()))
    for a, b in report.duplicates:
        console.print(f"[yellow]duplicate[/]: {escape(b)} repeats {escape(a)}")
    if report.shortened:
        console.print(f"[yellow]shortened[/]: {len(report.shortened)} record(s) too long for model.max_length: "
                      "training shortens their input (the answer is never cut):")
        for where in report.shortened[:_SHOWN]:
            console.print(f"  {escape(where)}")
        if len(report.shortened) > _SHOWN:
            console.print(f"  ... and {len(report.shortened) - _SHOWN} more")
    for problem in report.problems:
        console.print(f"[red]invalid[/]: {escape(problem)}")
    if report.problems:
        raise typer.Exit(1)


@app.command()
def train(task_file: Path = TaskFile, resume: bool = typer.Option(False, help="Continue from the last checkpoint.")) -> None:
    """Fine-tune the task's model with LoRA; writes the run directory."""
    from smalltune.training.run import train as run_training

    run_dir = run_training(load_config(task_file), resume=resume)
    console.print(f"run directory: {escape(str(run_dir))}")


def _with_interval(result, metric: str) -> str:
    from smalltune.evaluation.report import value_and_interval

    return " ".join(filter(None, value_and_interval(result.metrics.get(metric), result.intervals.get(metric))))


def print_results(results: dict, title: str) -> None:
    """The side-by-side table of metrics per system, with 95% bootstrap intervals."""
    from smalltune.evaluation.report import metric_names

    table = Table(title=title)
    table.add_column("metric")
    for name in results:
        table.add_column(name, justify="right")
    for metric in metric_names(r.metrics for r in results.values()):
        table.add_row(metric, *(_with_interval(r, metric) for r in results.values()))
    table.add_row("records/s", *(f"{r.records_per_second:.2f}" for r in results.values()))
    console.print(table)


@app.command("eval")
def eval_(
    run_dir: Path = typer.Argument(..., help="A run directory (runs/<name>)."),
    limit: int = typer.Option(None, help="Score only the first N test records."),
    engine: str = EngineName,
    test: Path = typer.Option(None, help="Score the records of this file (read like the task's test file) instead; "
                              "the results go to RUN_DIR/eval-<file name>/."),
) -> None:
    """Score the baselines, the untuned model (zero- and few-shot) and the fine-tuned one on the held-out records,
    side by side; writes metrics.json, predictions.jsonl, report.md and report.html into the run directory."""
    from smalltune.evaluation.evaluate import evaluate_run
    from smalltune.runs import RunDir

    with _RecordBar("eval") as bar:
        results = evaluate_run(run_dir, limit=limit, on_batch=bar.advance, engine=engine, test_file=test)
    print_results(results, f"eval: {run_dir}" + (f" on {test}" if test else ""))
    run = RunDir(run_dir) if test is None else RunDir(run_dir).evaluation(test)
    console.print(f"wrote {run.metrics}, {run.predictions} and the report {run.report_html}")


@app.command()
def predict(
    run_dir: Path = typer.Argument(..., help="A run directory (runs/<name>)."),
    input_file: str = typer.Argument(..., help="Records to answer (JSON, JSONL, CSV or Parquet in the task's format, "
                                     "or an .html page), or a folder of such files: a folder of .html/.htm pages "
                                     "answers each page, its id the file name. A path, or a URL (s3://, gs://, "
                                     "abfs://, hf://, file://, ...) read through pyarrow or fsspec."),
    out: Path = typer.Option(..., "-o", "--out", help="JSONL output: id, answer, parsed value, error. With --ray, a "
                             "folder of shards (part-00000.jsonl, ...; see --shard-format)."),
    engine: str = EngineName,
    ray: bool = typer.Option(False, "--ray", help="Answer on a Ray cluster (`pip install smalltune[ray]`): the "
                             "one at --ray-address, else RAY_ADDRESS, else a local Ray started for this run."),
    ray_address: str = typer.Option(None, "--ray-address", help="The cluster to join, e.g. auto (the one `ray start "
                                    "--head` started here) or ray://HEAD:10001."),
    workers: int = typer.Option(1, min=1, help="With --ray: actors, each holding one copy of the model."),
    threads_per_worker: int = typer.Option(1, min=1, help="With --ray: CPU threads (and Ray CPUs) per actor."),
    gpus_per_worker: float = typer.Option(0, min=0, help="With --ray: GPUs per actor (1 with --engine vllm)."),
    shard_format: str = typer.Option("jsonl", "--shard-format", help="With --ray: jsonl (one shard per run, "
                                     "appended) or parquet (one file per finished block, written whole; `result` "
                                     "and `scores` as JSON text). A rerun reads both."),
) -> None:
    """Answer every record of a file or folder (a path or a URL) with the fine-tuned model (the input is checked
    before the model loads).

    Killed and run again, it answers only what the output does not hold yet."""
    with _RecordBar("predict") as bar:
        if ray:
            from smalltune.inference.predict_ray import RayPlan, predict_on_ray

            plan = RayPlan(ray_address, workers, threads_per_worker, gpus_per_worker)
            count = predict_on_ray(run_dir, input_file, out, plan, engine, on_start=bar.start, on_batch=bar.advance,
                                   shard_format=shard_format)
        else:
            from smalltune.inference.predict import predict_file

            count = predict_file(run_dir, input_file, out, on_start=bar.start, on_batch=bar.advance, engine=engine)
    console.print(f"wrote {count} answers to {escape(str(out))}")


@app.command()
def demo(
    recipe: str = typer.Argument("complaints", help="The recipe: complaints, policy-pages, web-pages, news-classify, role-play, entities."),
    list_recipes: bool = typer.Option(False, "--list", help="List the recipes with their expected time, and exit."),
    work_dir: Path = typer.Option(None, help="Where the data, the run and the results go (default: runs/demo, or runs/demo-RECIPE)."),
    train_records: int = typer.Option(None, help="Training records (default: the recipe's)."),
    test_records: int = typer.Option(None, help="Held-out records, unseen in training (default: the recipe's)."),
    data_dir: Path = typer.Option(None, envvar="SMALLTUNE_DATA_DIR", help="Folder holding tnews/, huanhuan/, cluener/ and web-pages/ (default: shared/data beside the repository)."),
    model: str = typer.Option(None, help="Fine-tune this model instead of the recipe's (a local dir, .gguf or hub id)."),
    prepare_only: bool = typer.Option(False, "--prepare-only", help="Write the data and task.yaml, then stop."),
    seeds: int = typer.Option(1, min=1, help="Train this many times (train.seed, +1, ...) on the same data and "
                              "report each metric's mean and range over them (WORK_DIR/seeds.json)."),
) -> None:
    """A whole recipe on the default model: write its data, measure, fine-tune, measure again."""
    from smalltune.recipes.demo import RECIPES, get_recipe, prepare_recipe, run_demo

    if list_recipes:
        table = Table(title="recipes (time: `smalltune demo RECIPE` on a 2-core CPU, no GPU)")
        for column in ("recipe", "task", "train / test", "time"):
            table.add_column(column)
        for r in RECIPES.values():
            table.add_row(r.name, r.summary, f"{r.n_train} / {r.n_test}", r.expected_time)
        console.print(table)
        return
    chosen = get_recipe(recipe)
    work_dir = work_dir or chosen.default_work_dir()
    if prepare_only:
        task_file = prepare_recipe(recipe, work_dir, train_records, test_records, data_dir, log=console.print)
        console.print(f"wrote {task_file}: `smalltune train {task_file}`, then `smalltune eval`")
        return
    n_test = test_records if test_records is not None else chosen.n_test
    started = time.perf_counter()
    with _RecordBar("eval: untuned, then fine-tuned") as bar:
        results = run_demo(work_dir, train_records, n_test, log=console.print, on_batch=bar.advance,
                           recipe=recipe, data_dir=data_dir, model=model, seeds=seeds, on_start=bar.start)
    if seeds == 1:
        print_results(results.held_out, f"held-out {recipe} ({n_test} records)")
        for title, other in results.runs[0].other_tests.items():
            print_results(other, f"held-out {recipe}, {title}")
    else:
        for title, systems in results.spread().items():
            print_spread(systems, f"{recipe}, {title}: mean (min-max) over seeds {', '.join(str(r.seed) for r in results.runs)}")
        console.print(f"per seed: {escape(str(work_dir / 'seeds.json'))}")
    if chosen.published:
        print_published(chosen.published, results.held_out)
    console.print(f"total time: {(time.perf_counter() - started) / 60:.1f} min; results in {work_dir}")


def print_spread(systems: dict, title: str) -> None:
    """Each system's metrics over the seeds: mean (min-max), or one value where every run measured the same."""
    from smalltune.evaluation.report import metric_names

    table = Table(title=title)
    table.add_column("metric")
    for name in systems:
        table.add_column(name, justify="right")
    for metric in metric_names(systems.values()):
        cells = []
        for spread in (s.get(metric) for s in systems.values()):
            if spread is None:
                cells.append("")
            elif min(spread.values) == max(spread.values):
                cells.append(f"{spread.mean:.3f}")
            else:
                cells.append(f"{spread.mean:.3f} ({min(spread.values):.3f}-{max(spread.values):.3f})")
        table.add_row(metric, *cells)
    console.print(table)


def print_published(published, results: dict) -> None:
    """The recipe's published figures beside each system's value of the same metric on the held-out records."""
    table = Table(title=f"{published.metric}: this run and published results")
    table.add_column("system")
    table.add_column(published.metric, justify="right")
    for name, result in results.items():
        table.add_row(f"{name} (this run)", _with_interval(result, published.metric))
    for name, value in published.results.items():
        table.add_row(f"{name} (published)", f"{value:.3f}")
    console.print(table)
    console.print(f"published: {published.source}")


@app.command()
def serve(
    run_dir: Path = typer.Argument(..., help="A run directory (runs/<name>)."),
    host: str = typer.Option("127.0.0.1", help="Address to listen on; 0.0.0.0 exposes the server to the network."),
    port: int = typer.Option(8000, min=1, max=65535, help="TCP port (1-65535)."),
    max_queue: int = typer.Option(256, min=1, help="Requests that may wait for the model; more are answered 429."),
    max_body_bytes: int = typer.Option(1 << 20, min=1, help="Largest request body; larger ones are answered 413."),
    api_key_env: str = typer.Option(None, help="Environment variable holding the API key clients must send as Bearer."),
    engine: str = EngineName,
) -> None:
    """Serve the fine-tuned model over HTTP (OpenAI-compatible, plus the task's own /v1/extract or /v1/classify)."""
    from smalltune.serving.app import ServeSettings
    from smalltune.serving.app import serve as run_server

    settings = ServeSettings(max_queue=max_queue, max_body_bytes=max_body_bytes, api_key_env=api_key_env)
    run_server(run_dir, host=host, port=port, settings=settings, engine=engine)


@app.command()
def export(
    run_dir: Path = typer.Argument(..., help="A run directory (runs/<name>)."),
    out: Path = typer.Option(..., "--out", help="The folder to write (must not exist or be empty)."),
    merge: bool = typer.Option(False, "--merge", help="Fold the adapter into the base model: one standalone model."),
    gguf: bool = typer.Option(False, "--gguf", help="Merged, as one GGUF file with an Ollama Modelfile (llama.cpp, Ollama)."),
    gguf_type: str = typer.Option(None, "--gguf-type", help="With --gguf: bf16 (the default) | f16 | q8_0."),
) -> None:
    """Write the model for other servers: the adapter alone, with --merge a standalone HF model (vLLM, SGLang),
    with --gguf one GGUF file (llama.cpp, Ollama)."""
    from smalltune.serving.export import export_adapter, export_gguf, export_merged

    if gguf_type is not None and not gguf:
        raise typer.BadParameter("--gguf-type needs --gguf", param_hint="--gguf-type")
    if gguf:
        written, what = export_gguf(run_dir, out, gguf_type or "bf16"), f"GGUF model ({gguf_type or 'bf16'})"
    else:
        written, what = (export_merged(run_dir, out), "merged model") if merge else (export_adapter(run_dir, out), "adapter")
    console.print(f"wrote {what} to {escape(str(written))}")


@data_app.command("convert")
def data_convert(
    input_file: Path = typer.Argument(..., help="Records in the source format (JSON, JSONL, CSV or Parquet)."),
    out: Path = typer.Argument(..., help="The JSONL file to write."),
    source_format: str = typer.Option(..., "--from", help="alpaca | fudan-news | messages"),
) -> None:
    """Convert alpaca, fudan-news or messages records to the JSONL a task file reads with `format: alpaca`."""
    import yaml

    from smalltune.data.convert import convert_file

    converted = convert_file(input_file, out, source_format)
    settings = yaml.safe_dump({"data": converted.data}, allow_unicode=True, default_flow_style=None, sort_keys=False)
    console.print(f"wrote {converted.count} records to {escape(str(out))}; read them with, in the task file:\n"
                  f"{escape(settings)}", soft_wrap=True)


@app.command()
def label(
    task_file: Path = TaskFile,
    input_file: Path = typer.Option(..., "--input", help="Raw records (JSON, JSONL, CSV or Parquet in the task's format)."),
    out: Path = typer.Option(..., "-o", "--out", help="Labelled JSONL; rejects, cache and summary go next to it."),
    limit: int = typer.Option(None, min=1, help="Label N representative records (diverse, seeded) instead of all."),
    holdout: int = typer.Option(0, min=0, help="Also label M other representative records into OUT's .holdout.jsonl."),
    redact: bool = typer.Option(False, help="Mask phones, ID-card numbers and emails before sending; restore them after."),
    seed: int = typer.Option(None, help="Seed of the selection (default: the task's data.split_seed)."),
    base_url: str = typer.Option(None, help="Teacher endpoint up to /v1 (default: teacher.base_url)."),
    model: str = typer.Option(None, help="Teacher model name (default: teacher.model)."),
    api_key_env: str = typer.Option(None, help="Environment variable holding the teacher's key (default: teacher.api_key_env)."),
    concurrency: int = typer.Option(None, min=1, help="Requests in flight at once (default: teacher.concurrency)."),
    rpm: float = typer.Option(None, help="At most this many requests a minute (default: teacher.requests_per_minute)."),
) -> None:
    """Label raw texts with a teacher model (any OpenAI-compatible API); each answer is checked, bad ones rejected."""
    from smalltune.labelling.label import label_file
    from smalltune.labelling.teacher import with_teacher

    config = with_teacher(load_config(task_file), base_url=base_url, model=model, api_key_env=api_key_env,
                          concurrency=concurrency, requests_per_minute=rpm)
    for client_log in ("httpx", "httpx2"):  # the openai client's HTTP library logs every request at INFO
        logging.getLogger(client_log).setLevel(logging.WARNING)
    progress = _progress()
    bars: list = []

    def start(tally) -> None:
        name = "label" if not bars else "holdout"
        bars.append(progress.add_task(name, total=tally.records, completed=tally.done_before, rate=""))

    def advance(tally) -> None:
        tokens = tally.input_tokens + tally.output_tokens
        rate = (f"ok {tally.accepted} fixed {tally.repaired} rejected {tally.rejected} | "
                f"{tokens / 1000:.1f}k tok {tally.cost:.2f} {config.teacher.currency}")
        progress.update(bars[-1], completed=tally.decided, rate=rate)

    with progress:
        summaries = label_file(config, input_file, out, limit=limit, holdout=holdout, redact=redact, seed=seed,
                               on_start=start, on_record=advance)
    for summary in summaries:
        run = summary["this_run"]
        console.print(f"{summary['output']}: accepted {summary['accepted']} · repaired {summary['repaired']} · "
                      f"rejected {summary['rejected']} · unlabelled {summary['unlabelled']} of {summary['records']}")
        console.print(f"  this run: {run['requests']} requests ({run['from_cache']} answers from the cache), "
                      f"retries {run['retries'] or 0}, tokens {run['input_tokens']:,} in / {run['output_tokens']:,} out, "
                      f"cost {run['cost']:.4f} {run['currency']}")
        if summary["rejected"]:
            console.print(f"  rejected records and why: {summary['rejects']}")
    if any(summary["unlabelled"] for summary in summaries):
        console.print("[yellow]some records got no answer after all retries: run the same command again to label them")
        raise typer.Exit(1)


@app.command()
def plan(
    task_file: Path = TaskFile,
    gpu_gib: float = typer.Option(24.0, help="GPU memory to check the estimates against, in GiB."),
) -> None:
    """Estimate the GPU memory of LoRA training at the task's settings, for its model and Qwen3 0.6B/1.7B/4B."""
    from smalltune.training.memory import GIB, Settings, plain_trainer_logits
    from smalltune.training.memory import plan as estimate_memory

    config = load_config(task_file)
    settings = Settings.of(config)
    estimates = estimate_memory(config)
    table = Table(title=f"GPU memory for LoRA training, GiB: batch {settings.batch_size} x {settings.max_length} tokens, "
                        f"{'32' if settings.weight_bytes == 4 else '16'}-bit weights, LoRA r={config.lora.r}")
    for column in ("model", "params", "LoRA params", "weights", "LoRA + AdamW", "activations*", "logits", "total*",
                   f"fits {gpu_gib:g} GiB"):
        table.add_column(column, justify="left" if column == "model" else "right")
    for e in estimates:
        off, on = e.total(checkpointing=False) / GIB, e.total(checkpointing=True) / GIB
        fits = "yes" if off <= gpu_gib else "with checkpointing" if on <= gpu_gib else "no"
        table.add_row(
            e.arch.name, f"{e.arch.params / 1e9:.2f}B", f"{e.arch.lora_params / 1e6:.1f}M", f"{e.weights / GIB:.2f}",
            f"{e.lora / GIB:.2f}", f"{e.activations / GIB:.2f} / {e.activations_checkpointed / GIB:.2f}",
            f"{e.logits / GIB:.2f}", f"{off:.1f} / {on:.1f}", fits,
        )
    console.print(table)
    console.print(f"* gradient checkpointing off / on (train.gradient_checkpointing={config.train.gradient_checkpointing}; "
                  "auto turns it on when the total without it passes 90% of the GPU). Totals include ~0.5 GiB of CUDA context; "
                  "estimates, ±20%.")
    console.print(f"Logits: answer positions only, in vocabulary tiles. A plain transformers Trainer would hold "
                  f"{plain_trainer_logits(estimates[0].arch, settings) / GIB:.1f} GiB more for full-vocabulary logits.")


def main() -> None:
    """Entry point: user errors print one clear message and exit 2, without a traceback."""
    logging.basicConfig(level=logging.INFO, format="%(message)s", handlers=[RichHandler(console=console, show_path=False)])
    try:
        app()
    except SmalltuneError as exc:
        console.print(f"[bold red]error:[/] {escape(str(exc))}", soft_wrap=True)
        sys.exit(2)


if __name__ == "__main__":
    main()
