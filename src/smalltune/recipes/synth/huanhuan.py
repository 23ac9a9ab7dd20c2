"""huanhuan (甄嬛's lines from the TV series) as chat records: disjoint seeded train and test samples."""

from __future__ import annotations

import random
from pathlib import Path

from smalltune.data.readers import read_objects
from smalltune.io import atomic_write_jsonl
from smalltune.recipes.synth.shared_data import sample_rows, shared_data_dir, shared_file

HUANHUAN_FILE = "huanhuan/huanhuan.json"


def write_role_play(out_dir: Path, n_train: int, n_test: int, data_dir: Path | None = None, seed: int = 0) -> tuple[Path, Path]:
    """Disjoint seeded samples of the huanhuan dialogue pairs (alpaca) into out_dir/{train,test}.jsonl.

    Pairs whose line to answer repeats an earlier one are dropped, so no test line is seen in training.
    """
    source = shared_file(shared_data_dir(data_dir), HUANHUAN_FILE)
    first: dict[str, dict] = {}
    for line, row in read_objects(source):
        first.setdefault(row["instruction"].strip(), {"id": f"huanhuan-{line}", **row})
    rows = sample_rows(list(first.values()), n_train + n_test, random.Random(seed))
    paths = (Path(out_dir) / "train.jsonl", Path(out_dir) / "test.jsonl")
    atomic_write_jsonl(paths[0], rows[n_test:])
    atomic_write_jsonl(paths[1], rows[:n_test])
    return paths
