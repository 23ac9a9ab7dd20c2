"""The recipes: each seed task as data written to a folder, its task file, a LoRA fine-tune, and every system measured.

A recipe's task file is package data (smalltune/recipes/<name>.yaml, also linked from examples/<name>/).
Its data comes from a generator (complaints, policy-pages) or from a public data set read from the
shared data folder (news-classify: TNEWS, role-play: huanhuan), which is never copied into the project.
"""

from __future__ import annotations

import os
import random
from collections.abc import Callable
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import yaml

from smalltune.config import TaskConfig, load_config
from smalltune.data import read_rows
from smalltune.errors import ConfigError, DataError
from smalltune.evaluate import SystemResult, evaluate_run
from smalltune.io import atomic_write_jsonl, atomic_write_text
from smalltune.synth.complaints import write_complaints
from smalltune.synth.policy_pages import write_pages
from smalltune.train import train

DATA_DIR_ENV = "SMALLTUNE_DATA_DIR"


def shared_data_dir(given: Path | None = None) -> Path:
    """The folder holding tnews/ and huanhuan/: `given`, else $SMALLTUNE_DATA_DIR, else shared/data beside the repository."""
    if given is not None:
        return Path(given)
    if os.environ.get(DATA_DIR_ENV):
        return Path(os.environ[DATA_DIR_ENV])
    return Path(__file__).resolve().parents[3] / "shared" / "data"


def _shared_file(data_dir: Path, relative: str) -> Path:
    path = data_dir / relative
    if not path.is_file():
        raise DataError(f"{path}: not found; pass --data-dir (or set {DATA_DIR_ENV}) to the folder holding {relative}")
    return path


def _sample(rows: list, n: int, rng: random.Random) -> list:
    """n rows drawn without replacement, in the order drawn (all of them, shuffled, when n exceeds them)."""
    return rng.sample(rows, min(n, len(rows)))


# --- news-classify: TNEWS headlines in the fudan-news layout ------------------------------------

TNEWS_FILES = {"train": "tnews/tnews_train_few_all.json", "test": "tnews/tnews_dev_few_all.json"}
TNEWS_LABELS = "tnews/tnews_label_index2en2zh.json"


def tnews_labels(data_dir: Path) -> dict[str, str]:
    """TNEWS's English label names (news_sports ...) to the Chinese ones (体育 ...)."""
    rows = read_rows(_shared_file(data_dir, TNEWS_LABELS))
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
        source = _shared_file(data_dir, TNEWS_FILES[split])
        rows = [{"id": row["id"], "text": row["sentence"], "label": names[row["label_desc"]]} for _, row in read_rows(source)]
        atomic_write_jsonl(path, news_records(_sample(rows, n, rng), labels, rng, split))
    return paths


# --- role-play: 甄嬛's replies ------------------------------------------------------------------

HUANHUAN_FILE = "huanhuan/huanhuan.json"


def write_role_play(out_dir: Path, n_train: int, n_test: int, data_dir: Path | None = None, seed: int = 0) -> tuple[Path, Path]:
    """Disjoint seeded samples of the huanhuan dialogue pairs (alpaca) into out_dir/{train,test}.jsonl.

    Pairs whose line to answer repeats an earlier one are dropped, so no test line is seen in training.
    """
    source = _shared_file(shared_data_dir(data_dir), HUANHUAN_FILE)
    first: dict[str, dict] = {}
    for line, row in read_rows(source):
        first.setdefault(row["instruction"].strip(), {"id": f"huanhuan-{line}", **row})
    rows = _sample(list(first.values()), n_train + n_test, random.Random(seed))
    paths = (Path(out_dir) / "train.jsonl", Path(out_dir) / "test.jsonl")
    atomic_write_jsonl(paths[0], rows[n_test:])
    atomic_write_jsonl(paths[1], rows[:n_test])
    return paths


# --- the recipes --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Recipe:
    """One seed task ready to run: how to write its data, its default sizes and its expected time."""

    name: str
    summary: str
    write_data: Callable[[Path, int, int, Path | None], tuple[Path, Path]]
    n_train: int
    n_test: int
    minutes: float  # wall time of `smalltune demo <name>` on the 2-core development CPU
    measured: bool  # False: estimated from token counts and measured throughput, not yet timed end to end

    @property
    def expected_time(self) -> str:
        return f"{self.minutes:.0f} min" + ("" if self.measured else " (estimate)")

    def task_yaml(self) -> str:
        """The recipe's task file, as shipped in the package."""
        return resources.files("smalltune.recipes").joinpath(f"{self.name}.yaml").read_text(encoding="utf-8")

    def config(self) -> TaskConfig:
        """The recipe's task file, validated (its data paths still relative)."""
        return TaskConfig.model_validate(yaml.safe_load(self.task_yaml()))

    def default_work_dir(self) -> Path:
        return Path("runs/demo") if self.name == "complaints" else Path(f"runs/demo-{self.name}")


RECIPES: dict[str, Recipe] = {
    recipe.name: recipe
    for recipe in (
        Recipe("complaints", "complaint -> name, address, email, question",
               lambda out, n, m, _: write_complaints(out, n, m), 320, 100, 19, True),
        Recipe("policy-pages", "policy page text -> title, date, body",
               lambda out, n, m, _: write_pages(out, n, m), 80, 32, 21, True),
        Recipe("news-classify", "TNEWS headline -> one of its candidates",
               write_news, 600, 200, 15, True),
        Recipe("role-play", "a line to 甄嬛 -> her reply", write_role_play, 600, 100, 17, True),
    )
}


def get_recipe(name: str) -> Recipe:
    """The recipe called `name`; ConfigError lists the choices otherwise."""
    if name not in RECIPES:
        raise ConfigError(f"unknown recipe {name!r}; choose one of: {', '.join(RECIPES)} (smalltune demo --list)")
    return RECIPES[name]


def prepare_recipe(
    name: str, work_dir: Path, n_train: int | None = None, n_test: int | None = None,
    data_dir: Path | None = None, log: Callable[[str], None] = print,
) -> Path:
    """Write the recipe's data (work_dir/data) and task file (work_dir/task.yaml); returns the task file."""
    recipe = get_recipe(name)
    work_dir = Path(work_dir)
    n_train = recipe.n_train if n_train is None else n_train
    n_test = recipe.n_test if n_test is None else n_test
    train_path, test_path = recipe.write_data(work_dir / "data", n_train, n_test, data_dir)
    log(f"data: {n_train} training records in {train_path}, {n_test} held-out in {test_path}")
    task_file = work_dir / "task.yaml"
    text = recipe.task_yaml()
    if not (task_file.is_file() and task_file.read_text(encoding="utf-8") == text):  # an identical file (or link) stays
        atomic_write_text(task_file, text)
    return task_file


def run_demo(
    work_dir: Path,
    n_train: int | None = None,
    n_test: int | None = None,
    log: Callable[[str], None] = print,
    on_batch: Callable[[int], None] | None = None,
    recipe: str = "complaints",
    data_dir: Path | None = None,
    model: str | None = None,
) -> dict[str, SystemResult]:
    """Write the recipe's data and task file into work_dir, train, evaluate; returns the results per system.

    `model` replaces the recipe's model (any reference `model.name` accepts).
    """
    config = load_config(prepare_recipe(recipe, work_dir, n_train, n_test, data_dir, log))
    if model is not None:
        config = config.model_copy(update={"model": config.model.model_copy(update={"name": model})})
    log(f"fine-tuning {config.model.name} with LoRA: run directory {config.run_dir}")
    run_dir = train(config)
    log("measuring the untuned and the fine-tuned model on the held-out records")
    return evaluate_run(run_dir, on_batch=on_batch)
