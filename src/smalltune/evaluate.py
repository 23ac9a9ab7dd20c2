"""Evaluation: the untuned and the fine-tuned model on the same held-out records, side by side."""

from __future__ import annotations

import contextlib
import json
import random
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from smalltune.config import load_config
from smalltune.data import Record, load_splits
from smalltune.infer import Engine
from smalltune.io import atomic_write_json, atomic_write_text
from smalltune.tasks import Parsed, TaskKind
from smalltune.train import ADAPTER_DIR

UNTUNED, TUNED = "untuned", "fine-tuned"


@dataclass
class SystemResult:
    """One system's answers and scores on the test records."""

    name: str
    metrics: dict[str, float]
    intervals: dict[str, tuple[float, float]]
    answers: list[str]
    seconds: float
    new_tokens: int

    @property
    def records_per_second(self) -> float:
        return len(self.answers) / self.seconds if self.seconds else 0.0


def run_system(engine: Engine, name: str, records: list[Record], on_batch: Callable[[int], None] | None = None) -> SystemResult:
    """Answer and score the records with the engine as it stands (adapter on or off)."""
    generation = engine.generate(records, on_batch)
    parsed = [engine.task.parse(text, r) for text, r in zip(generation.texts, records)]
    metrics = engine.task.score(parsed, records)
    intervals = bootstrap_intervals(engine.task, parsed, records)
    return SystemResult(name, metrics, intervals, generation.texts, generation.seconds, generation.new_tokens)


def bootstrap_intervals(
    task: TaskKind, parsed: list[Parsed], records: list[Record], rounds: int = 1000, seed: int = 0
) -> dict[str, tuple[float, float]]:
    """95% percentile-bootstrap interval of every metric, resampling records (test sets are small)."""
    rng = random.Random(seed)
    samples: dict[str, list[float]] = {}
    for _ in range(rounds):
        pick = [rng.randrange(len(records)) for _ in records]
        for metric, value in task.score([parsed[i] for i in pick], [records[i] for i in pick]).items():
            samples.setdefault(metric, []).append(value)
    lo, hi = int(0.025 * rounds), min(rounds - 1, int(0.975 * rounds))
    ordered = {metric: sorted(values) for metric, values in samples.items()}
    return {metric: (v[lo], v[hi]) for metric, v in ordered.items()}


def evaluate_run(
    run_dir: Path, limit: int | None = None, on_batch: Callable[[int], None] | None = None
) -> dict[str, SystemResult]:
    """Score the untuned base model and the fine-tuned one on the run's test records; write metrics.json."""
    run_dir = Path(run_dir)
    config = load_config(run_dir / "task.yaml")
    engine = Engine.from_config(config, run_dir / ADAPTER_DIR)
    records = load_splits(config.data, check=engine.task.check).test[:limit]
    results = {}
    for name in (UNTUNED, TUNED):
        scope = engine.untuned() if name == UNTUNED else contextlib.nullcontext()
        with scope:
            results[name] = run_system(engine, name, records, on_batch)
    save_results(run_dir, records, results)
    return results


def save_results(run_dir: Path, records: list[Record], results: dict[str, SystemResult]) -> None:
    """metrics.json (scores and speed per system) and predictions.jsonl (every answer, per record)."""
    atomic_write_json(
        run_dir / "metrics.json",
        {
            "test_records": len(records),
            "systems": {
                name: {
                    "metrics": r.metrics,
                    "ci95": {k: [round(lo, 4), round(hi, 4)] for k, (lo, hi) in r.intervals.items()},
                    "seconds": round(r.seconds, 2),
                    "records_per_second": round(r.records_per_second, 3),
                    "new_tokens": r.new_tokens,
                }
                for name, r in results.items()
            },
        },
    )
    lines = [
        json.dumps({"id": rec.id, "input": rec.input, "reference": rec.output,
                    **{name: r.answers[i] for name, r in results.items()}}, ensure_ascii=False)
        for i, rec in enumerate(records)
    ]
    atomic_write_text(run_dir / "predictions.jsonl", "\n".join(lines) + "\n")
