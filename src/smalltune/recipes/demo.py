"""The recipes: each seed task as data written to a folder, its task file, a LoRA fine-tune, and every system measured.

A recipe's task file is package data (smalltune/recipes/<name>.yaml, also linked from examples/<name>/).
Its data comes from a writer in `recipes.synth`: a generator (complaints, policy-pages, web-pages) or a public data set
read from the shared data folder (news-classify: TNEWS, role-play: huanhuan, entities: CLUENER2020), which is never
copied into the project.
A recipe may also measure the fine-tuned model on other test files its writer makes (news-classify: the same
headlines among a few candidates each; complaints: the hand-written challenge set shipped in `recipes/challenge/`;
web-pages: the real labelled pages of the shared data folder),
and quote published results on its benchmark beside its own. With several seeds the demo trains once per seed on the
same data and reports each metric's mean and range over them.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import yaml

from smalltune.config import TaskConfig, load_config
from smalltune.errors import ConfigError
from smalltune.evaluation.evaluate import EvalSet, SystemResult, evaluate_sets
from smalltune.io import atomic_write_json, atomic_write_jsonl, atomic_write_text, read_jsonl
from smalltune.recipes.synth.cluener import write_entities
from smalltune.recipes.synth.complaints import write_complaints
from smalltune.recipes.synth.huanhuan import write_role_play
from smalltune.recipes.synth.policy_pages import write_pages
from smalltune.recipes.synth.real_pages import REAL_FILE, write_real_pages
from smalltune.recipes.synth.tnews import FEW_CANDIDATES_FILE, write_news
from smalltune.recipes.synth.web_pages import write_web_pages
from smalltune.training.run import train


# --- the recipes --------------------------------------------------------------------------------


@dataclass(frozen=True)
class OtherTest:
    """Another test file the demo measures the fine-tuned model (and the baselines) on, written by the recipe's
    data writer into its data folder; the results go to the run's eval-<file stem>/ folder."""

    title: str
    file: str
    untuned: bool = False  # also measure the untuned model (zero- and few-shot) on it


CHALLENGE_FILE = "challenge.jsonl"


def write_complaints_and_challenge(out_dir: Path, n_train: int, n_test: int, _data_dir: Path | None) -> tuple[Path, Path]:
    """The generated complaints (train.jsonl, test.jsonl) and, beside them, the hand-written challenge set."""
    paths = write_complaints(out_dir, n_train, n_test)
    challenge = resources.files("smalltune.recipes").joinpath("challenge", "complaints.jsonl")
    atomic_write_text(Path(out_dir) / CHALLENGE_FILE, challenge.read_text(encoding="utf-8"))
    return paths


UNTUNED_SAMPLE_FILE, UNTUNED_SAMPLE_RECORDS = "untuned-sample.jsonl", 100


def write_entities_and_untuned_sample(out_dir: Path, n_train: int, n_test: int, data_dir: Path | None) -> tuple[Path, Path]:
    """The CLUENER sentences (train.jsonl, test.jsonl) and, beside them, the test file's first 100 sentences
    (untuned-sample.jsonl): the untuned model, whose answers take several times as long, is measured on those."""
    paths = write_entities(out_dir, n_train, n_test, data_dir)
    atomic_write_jsonl(Path(out_dir) / UNTUNED_SAMPLE_FILE, read_jsonl(paths[1])[:UNTUNED_SAMPLE_RECORDS])
    return paths


def write_web_pages_and_real(out_dir: Path, n_train: int, n_test: int, data_dir: Path | None) -> tuple[Path, Path]:
    """The generated web pages (train.jsonl, test.jsonl) and, beside them, the real labelled pages (real.jsonl)."""
    paths = write_web_pages(out_dir, n_train, n_test)
    write_real_pages(out_dir, data_dir)
    return paths


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

CLUENER2020 = Published(
    "CLUENER2020 (Xu et al. 2020, arXiv:2001.04351), entity-level micro F1 on its test split (the reproduction: on "
    "the validation split), quoted", "list_f1",
    {"BiLSTM-CRF": 0.70, "BERT-base": 0.79, "RoBERTa-wwm-ext-large": 0.80, "human": 0.63,
     "RoBERTa-wwm-ext-large + BiLSTM + CRF (hemingkx/CLUENER2020 reproduction)": 0.796},
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
    untuned_on_held_out: bool = True  # False: the untuned model is measured on an other test only (a sample)

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
               write_complaints_and_challenge, 320, 100, 48, True,
               (OtherTest("hand-written challenge set", CHALLENGE_FILE, untuned=True),)),
        Recipe("policy-pages", "policy page text -> title, date, body",
               lambda out, n, m, _: write_pages(out, n, m), 80, 32, 21, True),
        Recipe("web-pages", "web page HTML -> publish date, main text as line ranges",
               write_web_pages_and_real, 48, 16, 51, True,
               (OtherTest("real pages", REAL_FILE, untuned=True),)),
        Recipe("news-classify", "TNEWS headline -> one of the 15 categories (FewCLUE)",
               write_news, 1185, 200, 15, True,
               (OtherTest("few candidates (3-6 per headline)", FEW_CANDIDATES_FILE),),
               FEWCLUE_TNEWS),
        Recipe("role-play", "a line to 甄嬛 -> her reply", write_role_play, 600, 100, 17, True),
        Recipe("entities", "news sentence -> its entities of 10 types, a list each (CLUENER2020)",
               write_entities_and_untuned_sample, 2000, 500, 80, False,
               (OtherTest(f"first {UNTUNED_SAMPLE_RECORDS} held-out sentences, every system", UNTUNED_SAMPLE_FILE,
                          untuned=True),),
               CLUENER2020, untuned_on_held_out=False),
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
class SeedResults:
    """One training seed's run: every system on the held-out records, and on each other test file."""

    seed: int
    run_dir: Path
    held_out: dict[str, SystemResult]
    other_tests: dict[str, dict[str, SystemResult]]  # OtherTest.title -> results per system


@dataclass(frozen=True)
class Spread:
    """One metric's values over the seeds that measured it."""

    values: tuple[float, ...]

    @property
    def mean(self) -> float:
        return statistics.fmean(self.values)

    def as_dict(self) -> dict:
        return {"mean": self.mean, "min": min(self.values), "max": max(self.values), "values": list(self.values)}


def metric_spread(runs: list[dict[str, SystemResult]]) -> dict[str, dict[str, Spread]]:
    """Per system and metric, the spread of its values over the runs that measured it."""
    values: dict[str, dict[str, list[float]]] = {}
    for results in runs:
        for name, result in results.items():
            for metric, value in result.metrics.items():
                values.setdefault(name, {}).setdefault(metric, []).append(value)
    return {name: {metric: Spread(tuple(v)) for metric, v in metrics.items()} for name, metrics in values.items()}


@dataclass(frozen=True)
class DemoResults:
    """The runs of every seed (the untuned model is measured in the first one only: it does not depend on it)."""

    runs: list[SeedResults]

    @property
    def held_out(self) -> dict[str, SystemResult]:
        """The first seed's results on the held-out records."""
        return self.runs[0].held_out

    def spread(self) -> dict[str, dict[str, dict[str, Spread]]]:
        """Per test set (`held-out`, then each other test's title): each system's metrics over the seeds."""
        sets = {"held-out": [run.held_out for run in self.runs]}
        for title in self.runs[0].other_tests:
            sets[title] = [run.other_tests[title] for run in self.runs]
        return {title: metric_spread(runs) for title, runs in sets.items()}


def seed_config(config: TaskConfig, seed: int, work_dir: Path) -> TaskConfig:
    """The task with training seed `seed`, its run directory under work_dir/seed-<seed>/."""
    return config.model_copy(update={"train": config.train.model_copy(update={"seed": seed}),
                                     "output_dir": Path(work_dir) / f"seed-{seed}"})


def records_to_answer(recipe: str, work_dir: Path, n_test: int, seeds: int) -> int:
    """How many answers the demo's model passes give: the progress bar's total (the data must be written)."""
    chosen = get_recipe(recipe)
    untuned_passes = 2 if chosen.config().eval.few_shot else 1
    total = n_test * ((untuned_passes if chosen.untuned_on_held_out else 0) + seeds)
    for other in chosen.other_tests:
        records = len(read_jsonl(Path(work_dir) / "data" / other.file))
        total += records * (seeds + (untuned_passes if other.untuned else 0))
    return total


def demo_eval_sets(recipe: str, work_dir: Path, untuned: bool) -> list[EvalSet]:
    """The held-out set, then the recipe's other tests; with `untuned` (the first seed), the untuned model is
    measured on those the recipe names for it."""
    chosen = get_recipe(recipe)
    return [EvalSet(untuned=untuned and chosen.untuned_on_held_out)] + [
        EvalSet(Path(work_dir) / "data" / other.file, untuned and other.untuned) for other in chosen.other_tests]


def run_demo(
    work_dir: Path,
    n_train: int | None = None,
    n_test: int | None = None,
    log: Callable[[str], None] = print,
    on_batch: Callable[[int], None] | None = None,
    recipe: str = "complaints",
    data_dir: Path | None = None,
    model: str | None = None,
    seeds: int = 1,
    on_start: Callable[[int], None] | None = None,
) -> DemoResults:
    """Write the recipe's data and task file into work_dir, train (once per seed), evaluate; returns the results.

    `model` replaces the recipe's model (any reference `model.name` accepts). With one seed the run directory is
    the task's own (work_dir/<name>); with several, seeds train.seed, train.seed+1, ... each train into
    work_dir/seed-<seed>/<name>, and work_dir/seeds.json holds every metric's mean and range over them.
    `on_start` gets the number of answers the model passes will give, once the data is written.
    """
    config = load_config(prepare_recipe(recipe, work_dir, n_train, n_test, data_dir, log))
    if model is not None:
        config = config.model_copy(update={"model": config.model.model_copy(update={"name": model})})
    if on_start is not None:
        on_start(records_to_answer(recipe, work_dir, n_test or get_recipe(recipe).n_test, seeds))
    runs = []
    for i in range(seeds):
        seed = config.train.seed + i
        seeded = config if seeds == 1 else seed_config(config, seed, work_dir)
        log(f"fine-tuning {seeded.model.name} with LoRA (seed {seed}): run directory {seeded.run_dir}")
        run_dir = train(seeded)
        other_tests = get_recipe(recipe).other_tests
        sets = demo_eval_sets(recipe, work_dir, i == 0)
        titles = ["the held-out records", *(f"the {other.title}" for other in other_tests)]
        log("measuring the fine-tuned model on " + ", ".join(titles)
            + "".join(f"; the untuned one on {title}" for title, s in zip(titles, sets) if s.untuned))
        held_out, *others = evaluate_sets(run_dir, sets, on_batch=on_batch)
        runs.append(SeedResults(seed, run_dir, held_out, {other.title: r for other, r in zip(other_tests, others)}))
    results = DemoResults(runs)
    if seeds > 1:
        save_spread(Path(work_dir) / "seeds.json", results)
    return results


def save_spread(path: Path, results: DemoResults) -> None:
    """Every metric's mean, range and per-seed values, per test set and system, as JSON."""
    spread = results.spread()
    atomic_write_json(path, {
        "seeds": [run.seed for run in results.runs],
        "run_dirs": [str(run.run_dir) for run in results.runs],
        "results": {title: {name: {metric: s.as_dict() for metric, s in metrics.items()} for name, metrics in systems.items()}
                    for title, systems in spread.items()},
    })
