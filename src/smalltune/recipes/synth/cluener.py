"""CLUENER2020 (fine-grained NER on Sina news sentences) as extract records: one list of entity strings per type.

Only CLUENER's training file is public with labels here, so the writer splits it: the sentences are shuffled once
(seeded) into a fixed pool, training takes its first n_train and the held-out test its last n_test. Runs with more
training records therefore nest (each holds every smaller run's sentences) and all of them share one test set.
"""

from __future__ import annotations

import random
from pathlib import Path

from smalltune.data.readers import read_objects
from smalltune.errors import DataError
from smalltune.io import atomic_write_jsonl
from smalltune.recipes.synth.shared_data import shared_data_dir, shared_file

CLUENER_FILE = "cluener/train.jsonl"
ENTITY_TYPES = ("address", "book", "company", "game", "government", "movie", "name", "organization", "position", "scene")

Label = dict[str, dict[str, list[list[int]]]]  # type -> entity text -> inclusive [start, end] spans


def entity_lists(label: Label) -> dict[str, list[str]]:
    """Per type, in ENTITY_TYPES order, the distinct entity strings in order of their first span ([] for none)."""
    return {kind: sorted(label.get(kind, {}), key=lambda entity: (min(s for s, _ in label[kind][entity]), entity))
            for kind in ENTITY_TYPES}


def cluener_sentences(data_dir: Path) -> list[dict]:
    """CLUENER's training sentences in file order, each {line, text, label}."""
    return [{"line": line, "text": row["text"], "label": row.get("label") or {}}
            for line, row in read_objects(shared_file(data_dir, CLUENER_FILE))]


def split_pool(rows: list, n_train: int, n_test: int, seed: int) -> tuple[list, list]:
    """(the first n_train, the last n_test) of the rows shuffled once with `seed`; DataError when they would overlap."""
    if n_train + n_test > len(rows):
        raise DataError(f"{CLUENER_FILE} has {len(rows)} sentences: {n_train} training and {n_test} test records "
                        "would overlap; lower --train-records or --test-records")
    pool = random.Random(seed).sample(rows, len(rows))
    return pool[:n_train], pool[len(pool) - n_test:]


def entity_records(rows: list[dict], prefix: str) -> list[dict]:
    """Alpaca records {id, input, output: {type: [entity, ...]}}, the id naming the sentence's line in the file."""
    return [{"id": f"{prefix}-{row['line']}", "input": row["text"], "output": entity_lists(row["label"])} for row in rows]


def write_entities(out_dir: Path, n_train: int, n_test: int, data_dir: Path | None = None,
                   seed: int = 0) -> tuple[Path, Path]:
    """CLUENER sentences into out_dir: train.jsonl (n_train) and test.jsonl (n_test, never trained on).
    Returns (train, test)."""
    train, test = split_pool(cluener_sentences(shared_data_dir(data_dir)), n_train, n_test, seed)
    out_dir = Path(out_dir)
    atomic_write_jsonl(out_dir / "train.jsonl", entity_records(train, "train"))
    atomic_write_jsonl(out_dir / "test.jsonl", entity_records(test, "test"))
    return out_dir / "train.jsonl", out_dir / "test.jsonl"
