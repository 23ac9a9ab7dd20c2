"""TNEWS (FewCLUE's Chinese news headlines) as classify records in the fudan-news layout: each headline with its
gold label among 2-5 sampled distractors."""

from __future__ import annotations

import random
from pathlib import Path

from smalltune.data.readers import read_objects
from smalltune.io import atomic_write_jsonl
from smalltune.recipes.synth.shared_data import sample_rows, shared_data_dir, shared_file

TNEWS_FILES = {"train": "tnews/tnews_train_few_all.json", "test": "tnews/tnews_dev_few_all.json"}
TNEWS_LABELS = "tnews/tnews_label_index2en2zh.json"


def tnews_labels(data_dir: Path) -> dict[str, str]:
    """TNEWS's English label names (news_sports ...) to the Chinese ones (体育 ...)."""
    rows = read_objects(shared_file(data_dir, TNEWS_LABELS))
    return {row["label_desc"]: row["label_zh"] for _, row in rows}


def news_records(rows: list[dict], labels: list[str], rng: random.Random, prefix: str) -> list[dict]:
    """fudan-news records {id, text, category, output}: the gold label among 2-5 sampled distractors, shuffled."""
    records = []
    for row in rows:
        gold = row["label"]
        distractors = rng.sample([label for label in labels if label != gold], rng.randint(2, 5))
        category = rng.sample([gold, *distractors], len(distractors) + 1)
        records.append({"id": f"{prefix}-{row['id']}", "text": row["text"], "category": category, "output": gold})
    return records


def write_news(out_dir: Path, n_train: int, n_test: int, data_dir: Path | None = None, seed: int = 0) -> tuple[Path, Path]:
    """Sample TNEWS train and dev headlines into out_dir/{train,test}.jsonl in the fudan-news layout."""
    data_dir = shared_data_dir(data_dir)
    names = tnews_labels(data_dir)
    labels = sorted(set(names.values()))
    rng = random.Random(seed)
    paths = (Path(out_dir) / "train.jsonl", Path(out_dir) / "test.jsonl")
    for path, (split, n) in zip(paths, (("train", n_train), ("test", n_test))):
        source = shared_file(data_dir, TNEWS_FILES[split])
        rows = [{"id": row["id"], "text": row["sentence"], "label": names[row["label_desc"]]}
                for _, row in read_objects(source)]
        atomic_write_jsonl(path, news_records(sample_rows(rows, n, rng), labels, rng, split))
    return paths
