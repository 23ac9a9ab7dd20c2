"""TNEWS (FewCLUE's Chinese news headlines) as classify records in the fudan-news layout {id, text, category, output}.

FewCLUE's standard question asks each headline among all 15 labels (`news_records`); the few-candidate setting asks
it among its gold label and 2-5 sampled distractors (`few_candidate_records`).
"""

from __future__ import annotations

import random
from pathlib import Path

from smalltune.data.readers import read_objects
from smalltune.io import atomic_write_jsonl
from smalltune.recipes.synth.shared_data import sample_rows, shared_data_dir, shared_file

TNEWS_FILES = {"train": "tnews/tnews_train_few_all.json", "test": "tnews/tnews_dev_few_all.json"}
TNEWS_LABELS = "tnews/tnews_label_index2en2zh.json"
FEW_CANDIDATES_FILE = "test-few.jsonl"  # the test headlines again, each among 3-6 candidates


def tnews_labels(data_dir: Path) -> dict[str, str]:
    """TNEWS's English label names (news_sports ...) to the Chinese ones (体育 ...), in the label file's order."""
    rows = read_objects(shared_file(data_dir, TNEWS_LABELS))
    return {row["label_desc"]: row["label_zh"] for _, row in rows}


def news_records(rows: list[dict], labels: list[str], prefix: str) -> list[dict]:
    """fudan-news records with every label as a candidate, in the labels' order (the same prompt for each)."""
    return [{"id": f"{prefix}-{row['id']}", "text": row["text"], "category": list(labels), "output": row["label"]}
            for row in rows]


def few_candidate_records(rows: list[dict], labels: list[str], rng: random.Random, prefix: str) -> list[dict]:
    """fudan-news records with the gold label among 2-5 sampled distractors, shuffled."""
    records = []
    for row in rows:
        gold = row["label"]
        distractors = rng.sample([label for label in labels if label != gold], rng.randint(2, 5))
        category = rng.sample([gold, *distractors], len(distractors) + 1)
        records.append({"id": f"{prefix}-{row['id']}", "text": row["text"], "category": category, "output": gold})
    return records


def _headlines(data_dir: Path, split: str, names: dict[str, str]) -> list[dict]:
    source = shared_file(data_dir, TNEWS_FILES[split])
    return [{"id": row["id"], "text": row["sentence"], "label": names[row["label_desc"]]} for _, row in read_objects(source)]


def write_news(out_dir: Path, n_train: int, n_test: int, data_dir: Path | None = None, seed: int = 0) -> tuple[Path, Path]:
    """Sample TNEWS train and dev headlines (seeded) into out_dir: train.jsonl and test.jsonl ask among all 15
    labels, FEW_CANDIDATES_FILE asks the same test headlines among 3-6 candidates each. Returns (train, test)."""
    data_dir = shared_data_dir(data_dir)
    names = tnews_labels(data_dir)
    labels = list(dict.fromkeys(names.values()))
    rng = random.Random(seed)
    out_dir = Path(out_dir)
    train = sample_rows(_headlines(data_dir, "train", names), n_train, rng)
    test = sample_rows(_headlines(data_dir, "test", names), n_test, rng)
    atomic_write_jsonl(out_dir / "train.jsonl", news_records(train, labels, "train"))
    atomic_write_jsonl(out_dir / "test.jsonl", news_records(test, labels, "test"))
    atomic_write_jsonl(out_dir / FEW_CANDIDATES_FILE, few_candidate_records(test, labels, rng, "test"))
    return out_dir / "train.jsonl", out_dir / "test.jsonl"
