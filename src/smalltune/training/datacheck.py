"""`smalltune data check`: what is in the data files, before any training."""

from __future__ import annotations

from dataclasses import dataclass

from smalltune.config import TaskConfig
from smalltune.data.records import Record, find_duplicates, load_splits
from smalltune.formatting import Example, encode_examples
from smalltune.models import load_tokenizer, resolve_model
from smalltune.tasks import build_task
from smalltune.tasks.metrics import percentile


@dataclass
class DataReport:
    """Counts per split, duplicates, invalid records (file:line), records whose input training would shorten
    to fit model.max_length (file:line), and token-length percentiles."""

    counts: dict[str, int]
    duplicates: list[tuple[str, str]]
    problems: list[str]
    token_percentiles: dict[str, int]
    shortened: list[str]


def _percentiles(lengths: list[int]) -> dict[str, int]:
    if not lengths:
        return {}
    ordered = sorted(lengths)
    return {"p50": percentile(ordered, 0.5), "p90": percentile(ordered, 0.9), "p99": percentile(ordered, 0.99),
            "max": ordered[-1]}


def _shortened(records: list[Record], examples: list[Example], left_out: list[str]) -> list[str]:
    """Where each record whose input was shortened is. `examples` are the records' in order, less those
    `encode_examples` left out: its problems, also in order, each starting with the record's `where`."""
    examples_in_order, problems = iter(examples), iter(left_out)
    problem = next(problems, None)
    shortened = []
    for record in records:
        if problem is not None and problem.startswith(f"{record.where}: "):
            problem = next(problems, None)
        elif next(examples_in_order).truncated:
            shortened.append(record.where)
    return shortened


def check_data(config: TaskConfig) -> DataReport:
    """Load every split as training would and report what training would see."""
    task = build_task(config)
    splits = load_splits(config.data, check=task.check)
    records = splits.train + splits.validation + splits.test
    problems = list(splits.problems)
    if not splits.train:
        problems.append(f"{config.data.train}: no valid training records (training needs at least one)")
    lengths: list[int] = []
    shortened: list[str] = []
    if records:
        tokenizer = load_tokenizer(resolve_model(config.model.name), config.model.chat_template)
        examples, too_long = encode_examples(tokenizer, task, records, config.model.max_length, config.model.enable_thinking)
        problems += too_long
        lengths = [len(e.input_ids) for e in examples]
        shortened = _shortened(records, examples, too_long)
    return DataReport(
        counts={"train": len(splits.train), "validation": len(splits.validation), "test": len(splits.test)},
        duplicates=find_duplicates(records),
        problems=problems,
        token_percentiles=_percentiles(lengths),
        shortened=shortened,
    )
