"""Evaluation: every system on the same held-out records, side by side.

The systems: each baseline in `eval.baselines`, the untuned model zero-shot, the untuned model with
`eval.few_shot` solved training examples in its prompt, and the fine-tuned model. Each answers in text (with
each candidate's probability where it has them: a model scoring classify labels, a baseline's own estimate);
the task's own `parse` and `score` judge all of them, and every score carries a 95% bootstrap interval.
"""

from __future__ import annotations

import random
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from smalltune.config import TaskConfig
from smalltune.data.records import Record, load_splits
from smalltune.evaluation.baselines import build_baseline
from smalltune.evaluation.report import TUNED, UNTUNED, write_report
from smalltune.inference.engine import Engine, OnBatch, load_engine
from smalltune.io import atomic_write_json, atomic_write_jsonl
from smalltune.runs import RunDir
from smalltune.tasks import Parsed, TaskKind, build_task


def few_shot_name(k: int) -> str:
    """The name of the untuned model prompted with k solved examples."""
    return f"untuned {k}-shot"


@dataclass
class SystemResult:
    """One system's answers and scores on the test records."""

    name: str
    metrics: dict[str, float]
    intervals: dict[str, tuple[float, float]]
    answers: list[str]
    seconds: float
    new_tokens: int
    details: dict[str, Any] = field(default_factory=dict)
    record_scores: list[float] = field(default_factory=list)
    probabilities: list[dict[str, float]] | None = None  # each answer's candidates and their probabilities

    @property
    def records_per_second(self) -> float:
        return len(self.answers) / self.seconds if self.seconds else 0.0

    @property
    def hours_per_million(self) -> float:
        """Hours to answer a million records at the measured speed, one process on this machine."""
        return 1e6 / self.records_per_second / 3600 if self.records_per_second else 0.0


def score_answers(
    task: TaskKind, name: str, records: list[Record], answers: list[str], seconds: float, new_tokens: int = 0,
    probabilities: list[dict[str, float]] | None = None,
) -> SystemResult:
    """Parse and score one system's answers (with their candidates' probabilities when it has them): headline
    metrics with intervals, extras, a score per record."""
    parsed = task.parse_all(answers, records, probabilities)
    return SystemResult(
        name=name,
        metrics=task.score(parsed, records),
        intervals=bootstrap_intervals(task, parsed, records),
        answers=answers,
        seconds=seconds,
        new_tokens=new_tokens,
        details=task.details(parsed, records),
        record_scores=[task.record_score(p, r) for p, r in zip(parsed, records)],
        probabilities=probabilities,
    )


def run_system(
    engine: Engine,
    name: str,
    records: list[Record],
    on_batch: OnBatch | None = None,
    shots: Sequence[Record] = (),
    budget: int | None = None,
) -> SystemResult:
    """Answer and score the records with the engine as it stands (adapter on or off), after `shots` if given,
    in prompts of at most `budget` tokens (default model.max_length)."""
    generation = engine.generate(records, on_batch, shots=shots, budget=budget)
    return score_answers(engine.task, name, records, generation.texts, generation.seconds, generation.new_tokens,
                         generation.probabilities)


def run_baseline(name: str, config: TaskConfig, train: list[Record], records: list[Record]) -> SystemResult:
    """Fit the registered baseline on the training records, then answer and score the test records."""
    baseline = build_baseline(name, config)
    baseline.fit(train)
    started = time.perf_counter()
    answers = baseline.answer(records)
    seconds = time.perf_counter() - started
    return score_answers(build_task(config), name, records, answers, seconds, probabilities=baseline.probabilities(records))


def bootstrap_intervals(
    task: TaskKind, parsed: list[Parsed], records: list[Record], rounds: int = 1000, seed: int = 0
) -> dict[str, tuple[float, float]]:
    """95% percentile-bootstrap interval of every metric, resampling records (test sets are small); each answer's
    per-record work (`TaskKind.record_facts`) is done once, not once per round."""
    rng = random.Random(seed)
    facts = [task.record_facts(result, record) for result, record in zip(parsed, records, strict=True)]
    samples: dict[str, list[float]] = {}
    for _ in range(rounds):
        pick = [rng.randrange(len(records)) for _ in records]
        for metric, value in task.aggregate([facts[i] for i in pick]).items():
            samples.setdefault(metric, []).append(value)
    lo, hi = int(0.025 * rounds), min(rounds - 1, int(0.975 * rounds))
    ordered = {metric: sorted(values) for metric, values in samples.items()}
    return {metric: (v[lo], v[hi]) for metric, v in ordered.items()}


@dataclass(frozen=True)
class EvalSet:
    """Records to score a run on: a test file read like the task's test file (None: the task's own test
    records), and whether the untuned model is measured on them too."""

    test_file: Path | None = None
    untuned: bool = True


def evaluate_run(
    run_dir: Path | RunDir, limit: int | None = None, on_batch: OnBatch | None = None, engine: str | None = None,
    test_file: Path | None = None, untuned: bool = True, **engine_options: Any,
) -> dict[str, SystemResult]:
    """Score the baselines, the untuned model (zero- and few-shot) and the fine-tuned one on the run's test
    records; write metrics.json, predictions.jsonl, report.md and report.html into the run directory.

    `test_file` (read like the task's test file) replaces the test records; its results go to the run's folder
    for that file (`RunDir.evaluation`) instead. Without `untuned` the untuned model is not measured. The models
    run in the engine named `engine` (`load_engine`; None: the task file's infer.engine). The few-shot examples are the first `eval.few_shot`
    training records; their prompt may grow by one training example's length (model.max_length) per shot, so the
    test record is not cut to make room.
    """
    return evaluate_sets(run_dir, [EvalSet(test_file, untuned)], limit, on_batch, engine, **engine_options)[0]


def evaluate_sets(
    run_dir: Path | RunDir, sets: Sequence[EvalSet], limit: int | None = None, on_batch: OnBatch | None = None,
    engine: str | None = None, **engine_options: Any,
) -> list[dict[str, SystemResult]]:
    """`evaluate_run` on each set in turn, the models loaded once for all of them: every set's untuned passes,
    then the adapter merged in once, then every set's fine-tuned pass. Returns each set's results, in order."""
    run = RunDir.load(run_dir)
    config = run.config()
    task = build_task(config)
    chosen = [_set_records(config, task, s, limit) for s in sets]
    results = [{name: run_baseline(name, config, train, records) for name in config.eval.baselines}
               for train, records in chosen]
    model = load_engine(run, engine, merge=False, **engine_options)
    shots = [train[: config.eval.few_shot] if s.untuned else [] for s, (train, _) in zip(sets, chosen)]
    untuned = [(records, its_shots, its_results) for s, (_, records), its_shots, its_results
               in zip(sets, chosen, shots, results) if s.untuned]
    if untuned:
        with model.untuned():
            for records, its_shots, its_results in untuned:
                its_results[UNTUNED] = run_system(model, UNTUNED, records, on_batch)
                if its_shots:
                    name = few_shot_name(len(its_shots))
                    its_results[name] = run_system(model, name, records, on_batch, its_shots,
                                                   config.model.max_length * (len(its_shots) + 1))
    if config.infer.merge_adapter:  # answer as predict and serve will: the adapter folded in (the untuned passes are done)
        model = model.merged()
    for s, (_, records), its_shots, its_results in zip(sets, chosen, shots, results):
        its_results[TUNED] = run_system(model, TUNED, records, on_batch)
        results_dir = run if s.test_file is None else run.evaluation(Path(s.test_file))
        save_results(results_dir, config, task, records, its_results, its_shots)
        write_report(results_dir)
    return results


def _set_records(config: TaskConfig, task: TaskKind, chosen: EvalSet, limit: int | None) -> tuple[list[Record], list[Record]]:
    """The training records and the (first `limit`) records to score of one evaluation set."""
    data = config.data if chosen.test_file is None else config.data.model_copy(update={"test": Path(chosen.test_file)})
    splits = load_splits(data, check=task.check)
    return splits.train, splits.test[:limit]


def save_results(
    run: Path | RunDir,
    config: TaskConfig,
    task: TaskKind,
    records: list[Record],
    results: dict[str, SystemResult],
    shots: Sequence[Record] = (),
) -> None:
    """metrics.json (scores, intervals, extras and speed per system) and predictions.jsonl (every answer, its
    per-record score and, for systems that have them, its candidates' probabilities, per record), the inputs of
    the report."""
    run = RunDir.at(run)
    atomic_write_json(
        run.metrics,
        {
            "task": config.name,
            "kind": config.kind,
            "headline": task.headline,
            "test_records": len(records),
            "few_shot_ids": [shot.id for shot in shots],
            "infer": config.infer.model_dump(mode="json"),
            "systems": {
                name: {
                    "metrics": r.metrics,
                    "ci95": {k: [round(lo, 4), round(hi, 4)] for k, (lo, hi) in r.intervals.items()},
                    "details": r.details,
                    "seconds": round(r.seconds, 2),
                    "records_per_second": round(r.records_per_second, 3),
                    "hours_per_million_records": round(r.hours_per_million, 4),
                    "new_tokens": r.new_tokens,
                }
                for name, r in results.items()
            },
        },
    )
    atomic_write_jsonl(run.predictions, [
        {
            "id": rec.id,
            "input": rec.input,
            "reference": rec.output,
            "reference_answer": task.answer(rec),
            "answers": {name: r.answers[i] for name, r in results.items()},
            "scores": {name: round(r.record_scores[i], 4) for name, r in results.items()},
            "probabilities": {name: r.probabilities[i] for name, r in results.items() if r.probabilities is not None},
        }
        for i, rec in enumerate(records)
    ])
