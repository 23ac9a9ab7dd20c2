"""`smalltune predict --ray`: the rows `predict` writes, answered by a pool of Ray actors, exactly once.

The driver reads the input (a file, or a folder of JSON, JSONL, CSV, Parquet and .html/.htm files) as `predict`
does (`data.records.load_inputs`), so every record has the same id and every unreadable one the same error line.
The records still to answer go into a Ray Data dataset; `map_batches` hands them to a pool of actors (`workers`),
each holding one engine of the run with `threads_per_worker` CPU threads (or one GPU), and the answered rows stream
back to the driver, which appends them to a shard of its own (`OUT/part-NNNNN.jsonl`, flushed after every batch).

Exactly once: the output folder is the only state. A rerun reads every shard (a line torn by a kill is cut off, as
`predict` does) and answers only the ids no shard holds yet, into a new shard. A worker lost mid-run is Ray's to
handle: Ray Data's actor pools restart a lost actor and retry its unfinished batches (their defaults), and a batch reaches the driver only when it is
done, so nothing is written twice. The run itself travels to the workers through Ray's object store (the task file
and the adapter: a few MB), so a worker machine needs smalltune and the base model, not the run directory.
"""

from __future__ import annotations

import os
import pickle
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from smalltune.data.records import Record, load_inputs
from smalltune.errors import OutputError, RunError
from smalltune.inference.engine import OnBatch, load_engine
from smalltune.inference.predict import PREDICTION_KEYS, answer_rows, invalid_row, still_to_answer
from smalltune.io import append_jsonl, json_line, read_appended
from smalltune.runs import RunDir

BLOCK_BATCHES = 16  # engine batches per Ray block: a lost block is redone whole; a small one pads more (length sort)
SHARD_PREFIX = "part-"  # the output folder holds part-00000.jsonl, part-00001.jsonl, ...: one per driver run


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
    input_path: Path,
    out_dir: Path,
    plan: RayPlan = RayPlan(),
    engine: str = "transformers",
    on_start: Callable[[int], None] | None = None,
    on_batch: OnBatch | None = None,
) -> int:
    """Answer every record of `input_path` not yet in the shards of `out_dir` on a Ray cluster; returns how many
    were answered. The input is read, and the output folder checked, before Ray starts."""
    ray = _import_ray()
    run = RunDir.load(run_dir)
    config = run.config()
    out_dir = Path(out_dir)
    _check_out_dir(out_dir, Path(input_path))
    loaded = load_inputs(Path(input_path), config.data)
    written = [row for shard in shards(out_dir) for row in read_appended(shard, PREDICTION_KEYS)]
    todo, invalid = still_to_answer(loaded, written)
    if on_start:
        on_start(len(todo))
    out_dir.mkdir(parents=True, exist_ok=True)
    with _new_shard(out_dir).open("a", encoding="utf-8") as handle:
        for row in invalid:
            append_jsonl(handle, invalid_row(row))
        if not todo:
            return 0
        for lines in _answered_on_ray(ray, run, todo, plan, engine, config.infer.batch_size):
            handle.writelines(lines)
            handle.flush()
            if on_batch:
                on_batch(len(lines))
    return len(todo)


def shards(out_dir: Path) -> list[Path]:
    """The output shards already in `out_dir`, in the order they were written."""
    return sorted(out_dir.glob(f"{SHARD_PREFIX}*.jsonl")) if out_dir.is_dir() else []


def _check_out_dir(out_dir: Path, input_path: Path) -> None:
    """OutputError unless `out_dir` is a new or empty folder, or one holding only shards, outside the input."""
    if out_dir.exists() and not out_dir.is_dir():
        raise OutputError(f"{out_dir}: is a file; with --ray the output is a folder of shards: give a folder name")
    inside = input_path.resolve()
    if out_dir.resolve() == inside or (input_path.is_dir() and inside in out_dir.resolve().parents):
        raise OutputError(f"{out_dir}: the output folder would be read as input ({input_path}); choose another one")
    if out_dir.is_dir():
        others = sorted(p.name for p in out_dir.iterdir() if p not in shards(out_dir) and not p.name.startswith("."))
        if others:
            raise OutputError(f"{out_dir}: holds {others[0]}, which `predict --ray` did not write; give the output "
                              "a new folder (or one of its earlier outputs)")


def _new_shard(out_dir: Path) -> Path:
    """The next shard's path: one past the highest number written so far."""
    numbers = [int(p.stem.removeprefix(SHARD_PREFIX)) for p in shards(out_dir)
               if p.stem.removeprefix(SHARD_PREFIX).isdigit()]
    return out_dir / f"{SHARD_PREFIX}{max(numbers, default=-1) + 1:05d}.jsonl"


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
