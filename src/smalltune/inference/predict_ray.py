"""`smalltune predict --ray`: the rows `predict` writes, answered by a pool of Ray actors, exactly once.

The driver reads the input (a file, or a folder of JSON, JSONL, CSV, Parquet and .html/.htm files, on disk or named
by a URL such as s3://bucket/records/ or hf://datasets/...) as `predict` does (`data.records.load_inputs`), so every
record has the same id and every unreadable one the same error line. The records still to answer go into a Ray Data
dataset; `map_batches` hands them to a pool of actors (`workers`), each holding one engine of the run with
`threads_per_worker` CPU threads (or one GPU), and the answered rows stream back to the driver, which writes them to
shards of its own, a finished block at a time:

- `jsonl` (the default): one file per driver run, `OUT/part-NNNNN.jsonl`, appended and flushed after every block.
- `parquet`: each block its own file, `OUT/part-NNNNN-BBBBB.parquet` (run N, block B), written under a temporary
  dot-name and renamed, so a killed driver never leaves a partial one and the folder reads as one Parquet dataset
  (pyarrow, pandas, DuckDB and Spark skip dot-files). The columns are the JSONL rows' keys, plus `scores` and `where`
  (null where a row lacks them); `result` and `scores` hold JSON text (`json.loads` gives the JSONL row's value), as
  a result is an object in one task, a label or a list in another, and null when not answered.

The format is chosen by `shard_format`, not guessed from the folder's name, and a rerun reads the shards of both.

Exactly once: the output folder is the only state. A rerun reads every shard (a JSONL line torn by a kill is cut off,
as `predict` does) and answers only the ids no shard holds yet, into new shards. A worker lost mid-run is Ray's to
handle: Ray Data's actor pools restart a lost actor and retry its unfinished batches (their defaults), and a batch
reaches the driver only when it is done, so nothing is written twice. The run itself travels to the workers through
Ray's object store (the task file and the adapter: a few MB), so a worker machine needs smalltune and the base model,
not the run directory.
"""

from __future__ import annotations

import itertools
import json
import os
import pickle
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, get_args

from smalltune.data.readers import DataPath, data_path, local_path
from smalltune.data.records import Record, load_inputs
from smalltune.data.remote import RemotePath
from smalltune.errors import OutputError, RunError
from smalltune.inference.engine import OnBatch, load_engine
from smalltune.inference.predict import PREDICTION_KEYS, answer_rows, invalid_row, still_to_answer
from smalltune.io import atomic_write_bytes, json_line, read_appended
from smalltune.runs import RunDir

BLOCK_BATCHES = 16  # engine batches per Ray block: a lost block is redone whole; a small one pads more (length sort)
SHARD_PREFIX = "part-"  # part-00000.jsonl (one per driver run) or part-00000-00000.parquet (one per block)
ShardFormat = Literal["jsonl", "parquet"]
SHARD_FORMATS: tuple[str, ...] = get_args(ShardFormat)
PARQUET_COLUMNS = (*PREDICTION_KEYS, "scores", "where")  # every Parquet shard's columns, in this order
JSON_COLUMNS = ("result", "scores")  # held as JSON text in Parquet: their values differ in type from row to row


@dataclass(frozen=True)
class RayPlan:
    """Where and how wide to answer: the cluster (None: `RAY_ADDRESS`, else a new local Ray), the actors,
    each one's CPU threads, and one GPU per actor (for the vLLM engine on GPU machines)."""

    address: str | None = None
    workers: int = 1
    threads_per_worker: int = 1
    gpus_per_worker: float = 0


def predict_on_ray(
    run_dir: Path | str | RunDir,
    input_path: Path | str | RemotePath,
    out_dir: Path,
    plan: RayPlan = RayPlan(),
    engine: str | None = None,
    on_start: Callable[[int], None] | None = None,
    on_batch: OnBatch | None = None,
    shard_format: ShardFormat = "jsonl",
) -> int:
    """Answer every record of `input_path` (a path, or a URL string) not yet in the shards of `out_dir` on a Ray
    cluster, into new `shard_format` shards; returns how many were answered. The input is read, and the output
    folder checked, before Ray starts."""
    if shard_format not in SHARD_FORMATS:
        raise OutputError(f"shard format {shard_format!r}: use one of {', '.join(SHARD_FORMATS)}")
    ray = _import_ray()
    run = RunDir.load(run_dir)
    config = run.config()
    out_dir, source = Path(out_dir), data_path(input_path).resolve()
    _check_out_dir(out_dir, source)
    loaded = load_inputs(source, config.data)
    todo, invalid = still_to_answer(loaded, [row for shard in shards(out_dir) for row in read_shard(shard)])
    if on_start:
        on_start(len(todo))
    out_dir.mkdir(parents=True, exist_ok=True)
    with _shard_writer(out_dir, shard_format) as write:
        if invalid:
            write([json_line(invalid_row(row)) for row in invalid])
        if not todo:
            return 0
        for lines in _answered_on_ray(ray, run, todo, plan, engine, config.infer.batch_size):
            write(lines)
            if on_batch:
                on_batch(len(lines))
    return len(todo)


def shards(out_dir: Path) -> list[Path]:
    """The output shards already in `out_dir` (JSONL and Parquet), in the order they were written."""
    if not out_dir.is_dir():
        return []
    return sorted(path for form in SHARD_FORMATS for path in out_dir.glob(f"{SHARD_PREFIX}*.{form}"))


def read_shard(path: Path) -> list[dict]:
    """The rows of one shard, as `predict` writes them; a JSONL shard is made ready to be appended to
    (`io.read_appended`), and OutputError names a file that is not a shard of ours."""
    return read_parquet_shard(path) if path.suffix == ".parquet" else read_appended(path, PREDICTION_KEYS)


def write_parquet_shard(path: Path, rows: list[dict]) -> None:
    """Write output rows as one Parquet file of `PARQUET_COLUMNS`, atomically (`io.atomic_write_bytes`)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    columns = {name: [_to_cell(name, row.get(name)) for row in rows] for name in PARQUET_COLUMNS}
    sink = pa.BufferOutputStream()
    pq.write_table(pa.table(columns, schema=_parquet_schema()), sink)
    atomic_write_bytes(path, sink.getvalue().to_pybytes())


def read_parquet_shard(path: Path) -> list[dict]:
    """The rows of a Parquet shard, each as its JSONL row: JSON text parsed, a null `scores` or `where` left out."""
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
        if table.schema != _parquet_schema():
            raise ValueError(f"its columns are {', '.join(table.column_names)}")
        return [{key: json.loads(value) if key in JSON_COLUMNS and value is not None else value
                 for key, value in row.items() if key in PREDICTION_KEYS or value is not None}
                for row in table.to_pylist()]
    except Exception as exc:  # pyarrow raises several unrelated types for a file that is not ours
        raise OutputError(f"{path}: not a shard `predict --ray` wrote ({exc}); it is left as it is: move it out of "
                          "the output folder, or give the output another folder") from exc


def _to_cell(name: str, value: Any) -> Any:
    return json.dumps(value, ensure_ascii=False) if name in JSON_COLUMNS and value is not None else value


def _parquet_schema() -> Any:
    import pyarrow as pa

    types = {"input_shortened": pa.bool_()}
    return pa.schema([(name, types.get(name, pa.string())) for name in PARQUET_COLUMNS])


@contextmanager
def _shard_writer(out_dir: Path, shard_format: ShardFormat) -> Iterator[Callable[[list[str]], None]]:
    """This driver run's writer of output lines: appended and flushed to one new JSONL shard, or each call's lines
    as a new Parquet shard (temporary files a killed run left are removed first)."""
    run = 1 + max((int(number) for path in shards(out_dir)
                   if (number := path.stem.removeprefix(SHARD_PREFIX).split("-")[0]).isdigit()), default=-1)
    if shard_format == "jsonl":
        with (out_dir / f"{SHARD_PREFIX}{run:05d}.jsonl").open("a", encoding="utf-8") as handle:
            def append(lines: list[str]) -> None:
                handle.writelines(lines)
                handle.flush()

            yield append
        return
    for leftover in out_dir.glob(f".{SHARD_PREFIX}*.tmp"):
        leftover.unlink(missing_ok=True)
    blocks = itertools.count()

    def write(lines: list[str]) -> None:
        write_parquet_shard(out_dir / f"{SHARD_PREFIX}{run:05d}-{next(blocks):05d}.parquet",
                            [json.loads(line) for line in lines])

    yield write


def _check_out_dir(out_dir: Path, source: DataPath) -> None:
    """OutputError unless `out_dir` is a new or empty folder, or one holding only shards, outside the input."""
    if out_dir.exists() and not out_dir.is_dir():
        raise OutputError(f"{out_dir}: is a file; with --ray the output is a folder of shards: give a folder name")
    inside = local_path(source)
    if inside is not None and (out_dir.resolve() == inside.resolve()
                               or (inside.is_dir() and inside.resolve() in out_dir.resolve().parents)):
        raise OutputError(f"{out_dir}: the output folder would be read as input ({source}); choose another one")
    if out_dir.is_dir():
        ours = set(shards(out_dir))
        others = sorted(p.name for p in out_dir.iterdir() if p not in ours and not p.name.startswith("."))
        if others:
            raise OutputError(f"{out_dir}: holds {others[0]}, which `predict --ray` did not write; give the output "
                              "a new folder (or one of its earlier outputs)")


def _import_ray() -> Any:
    """Ray, or RunError saying how to install it (it is an optional extra)."""
    try:
        import ray
        import ray.data
    except ImportError as exc:
        raise RunError("predict --ray needs Ray Data: pip install 'smalltune[ray]' (on every machine of the "
                       "cluster)") from exc
    return ray


def _block_size(records: int, batch: int, workers: int) -> int:
    """Records per block: whole engine batches (the engine sorts a block by length, then batches it), at most
    `BLOCK_BATCHES` of them, in a number of blocks the workers share evenly."""
    blocks = -(-records // (batch * BLOCK_BATCHES))
    blocks = -(-blocks // workers) * workers
    per_block = -(-records // blocks)
    return -(-per_block // batch) * batch if per_block >= batch else per_block  # fewer: a block for each worker


class _Answerer:
    """A Ray Data actor: one engine of the run, answering batches of pickled records with output lines."""

    def __init__(self, files: dict[str, bytes], engine: str, threads: int):
        import torch

        torch.set_num_threads(threads)
        self.folder = tempfile.TemporaryDirectory(prefix="smalltune-run-")
        for name, data in files.items():
            path = Path(self.folder.name) / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
        self.engine = load_engine(self.folder.name, engine)

    def __call__(self, batch: dict[str, Any]) -> dict[str, list[str]]:
        records = [pickle.loads(data) for data in batch["record"]]
        return {"line": [json_line(row) for row in answer_rows(self.engine, records)]}


def _answered_on_ray(ray: Any, run: RunDir, todo: list[Record], plan: RayPlan, engine: str,
                     batch: int) -> Iterator[list[str]]:
    """The output lines of `todo`, a finished batch at a time, answered by the plan's actors."""

    started_here = not ray.is_initialized()
    if started_here:
        ray.init(address=plan.address or os.environ.get("RAY_ADDRESS"), include_dashboard=False,
                 log_to_driver=False, configure_logging=False)
    try:
        context = ray.data.DataContext.get_current()
        context.enable_progress_bars = False
        context.print_on_execution_start = False
        items = [{"record": pickle.dumps(record)} for record in todo]
        size = _block_size(len(items), batch, plan.workers)
        dataset = ray.data.from_items(items, override_num_blocks=-(-len(items) // size))
        answered = dataset.map_batches(
            _Answerer, batch_size=size, batch_format="numpy",
            fn_constructor_kwargs={"files": run.model_files(), "engine": engine, "threads": plan.threads_per_worker},
            compute=ray.data.ActorPoolStrategy(size=plan.workers), num_cpus=plan.threads_per_worker,
            num_gpus=plan.gpus_per_worker or None)
        for batch in answered.iter_batches(batch_size=None, batch_format="numpy"):
            yield list(batch["line"])
    finally:
        if started_here:
            ray.shutdown()
