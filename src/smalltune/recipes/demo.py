"""The recipes: each seed task as data written to a folder, its task file, a LoRA fine-tune, and every system measured.

A recipe's task file is package data (smalltune/recipes/<name>.yaml, also linked from examples/<name>/).
Its data comes from a writer in `recipes.synth`: a generator (complaints, policy-pages) or a public data set
read from the shared data folder (news-classify: TNEWS, role-play: huanhuan), which is never copied into the project.
A recipe may also measure the fine-tuned model on other test files its writer makes (news-classify: the same
headlines among a few candidates each), and quote published results on its benchmark beside its own.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import yaml

from smalltune.config import TaskConfig, load_config
from smalltune.errors import ConfigError
from smalltune.evaluation.evaluate import SystemResult, evaluate_run
from smalltune.io import atomic_write_text
from smalltune.recipes.synth.complaints import write_complaints
from smalltune.recipes.synth.huanhuan import write_role_play
from smalltune.recipes.synth.policy_pages import write_pages
from smalltune.recipes.synth.tnews import FEW_CANDIDATES_FILE, write_news
from smalltune.training.run import train


# --- the recipes --------------------------------------------------------------------------------


@dataclass(frozen=True)
class OtherTest:
    """Another test file the demo measures the fine-tuned model (and the baselines) on, written by the recipe's
    data writer into its data folder; the results go to the run's eval-<file stem>/ folder."""

    title: str
    file: str


@dataclass(frozen=True)
class Published:
    """Published results on the recipe's benchmark, quoted (not re-run), which the demo shows beside its own."""

    source: str
    metric: str
    results: dict[str, float]


FEWCLUE_TNEWS = Published(
    "FewCLUE (Xu et al. 2021, arXiv:2107.07498), TNEWS few-shot, quoted", "accuracy",
    {"RoBERTa fine-tuning": 0.49, "PET": 0.545, "P-tuning": 0.559, "best FewCLUE result": 0.564, "human": 0.71},
)


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
    other_tests: tuple[OtherTest, ...] = ()
    published: Published | None = None

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
        Recipe("news-classify", "TNEWS headline -> one of the 15 categories (FewCLUE)",
               write_news, 1185, 200, 20, False,
               (OtherTest("few candidates (3-6 per headline)", FEW_CANDIDATES_FILE),),
               FEWCLUE_TNEWS),
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


@dataclass(frozen=True)
class DemoResults:
    """Every system on the held-out records, and the baselines and fine-tuned model on each other test file."""

    held_out: dict[str, SystemResult]
    other_tests: dict[str, dict[str, SystemResult]]  # OtherTest.title -> results per system


def run_demo(
    work_dir: Path,
    n_train: int | None = None,
    n_test: int | None = None,
    log: Callable[[str], None] = print,
    on_batch: Callable[[int], None] | None = None,
    recipe: str = "complaints",
    data_dir: Path | None = None,
    model: str | None = None,
) -> DemoResults:
    """Write the recipe's data and task file into work_dir, train, evaluate; returns the results per system.

    `model` replaces the recipe's model (any reference `model.name` accepts).
    """
    config = load_config(prepare_recipe(recipe, work_dir, n_train, n_test, data_dir, log))
    if model is not None:
        config = config.model_copy(update={"model": config.model.model_copy(update={"name": model})})
    log(f"fine-tuning {config.model.name} with LoRA: run directory {config.run_dir}")
    run_dir = train(config)
    log("measuring the untuned and the fine-tuned model on the held-out records")
    held_out = evaluate_run(run_dir, on_batch=on_batch)
    others = {}
    for other in get_recipe(recipe).other_tests:
        log(f"measuring the fine-tuned model on {other.title}")
        others[other.title] = evaluate_run(run_dir, on_batch=on_batch, test_file=Path(work_dir) / "data" / other.file,
                                           untuned=False)
    return DemoResults(held_out, others)
