"""The recipes: task files, examples, data from the shared folder (TNEWS, huanhuan), the TF-IDF baseline, `demo --list`."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from typer.testing import CliRunner

from conftest import SHARED_DATA
from smalltune.evaluation.baselines import build_baseline
from smalltune.cli import app
from smalltune.config import load_config
from smalltune.data.records import load_splits
from smalltune.recipes.demo import RECIPES, get_recipe, prepare_recipe
from smalltune.recipes.synth.shared_data import shared_data_dir
from smalltune.recipes.synth.tnews import FEW_CANDIDATES_FILE, few_candidate_records, tnews_labels, write_news
from smalltune.errors import ConfigError, DataError
from smalltune.tasks import build_task

REPO = Path(__file__).resolve().parents[1]
needs_shared_data = pytest.mark.skipif(not (SHARED_DATA / "tnews").is_dir(), reason="shared/data is not beside the repo")


@pytest.mark.parametrize("name", list(RECIPES))
def test_each_recipe_has_a_task_file_and_an_example_linked_to_it(name):
    recipe = RECIPES[name]
    assert recipe.config().name == name
    example = REPO / "examples" / name / "task.yaml"
    assert example.is_symlink() and not os.readlink(example).startswith("/")  # one source, relative link
    assert example.resolve() == (REPO / "src" / "smalltune" / "recipes" / f"{name}.yaml").resolve()
    readme = (REPO / "examples" / name / "README.md").read_text(encoding="utf-8")
    assert f"smalltune demo {name}" in readme or (name == "complaints" and "smalltune demo" in readme)
    assert f"about {recipe.minutes:.0f} min" in readme and "| metric |" in readme


def test_demo_list_shows_every_recipe_with_its_time():
    result = CliRunner().invoke(app, ["demo", "--list"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    for recipe in RECIPES.values():
        line = next(line for line in result.output.splitlines() if f" {recipe.name} " in line)
        assert f"{recipe.n_train} / {recipe.n_test}" in line and recipe.expected_time in line
        assert ("(estimate)" in line) != recipe.measured


def test_unknown_recipe_names_the_choices(tmp_path):
    with pytest.raises(ConfigError, match="complaints, policy-pages, web-pages, news-classify, role-play, entities"):
        get_recipe("sentiment")


def test_data_dir_comes_from_the_argument_then_the_environment_then_beside_the_repo(monkeypatch, tmp_path):
    monkeypatch.delenv("SMALLTUNE_DATA_DIR", raising=False)
    assert shared_data_dir() == SHARED_DATA
    monkeypatch.setenv("SMALLTUNE_DATA_DIR", str(tmp_path))
    assert shared_data_dir() == tmp_path
    assert shared_data_dir(tmp_path / "x") == tmp_path / "x"


def test_missing_shared_data_says_how_to_point_at_it(tmp_path):
    with pytest.raises(DataError, match=r"tnews_label_index2en2zh.json: not found; pass --data-dir \(or set SMALLTUNE_DATA_DIR\)"):
        write_news(tmp_path / "out", 5, 5, data_dir=tmp_path)


def test_candidates_hold_the_gold_label_among_distractors_deterministically():
    import random

    labels = ["体育", "财经", "科技", "娱乐", "军事", "教育", "旅游"]
    rows = [{"id": i, "text": f"标题{i}", "label": labels[i % 7]} for i in range(50)]
    first = few_candidate_records(rows, labels, random.Random(3), "train")
    assert first == few_candidate_records(rows, labels, random.Random(3), "train")
    assert first != few_candidate_records(rows, labels, random.Random(4), "train")
    for record in first:
        assert record["output"] in record["category"]
        assert 3 <= len(record["category"]) <= 6 and len(set(record["category"])) == len(record["category"])
        assert set(record["category"]) <= set(labels)
    assert len({record["category"].index(record["output"]) for record in first}) > 1  # the gold is not always first


@needs_shared_data
def test_tnews_recipe_asks_among_all_15_labels_and_the_few_candidate_file_among_its_own(tmp_path):
    task_file = prepare_recipe("news-classify", tmp_path, n_train=40, n_test=20, log=lambda _: None)
    config = load_config(task_file)
    task = build_task(config)
    labels = list(dict.fromkeys(tnews_labels(SHARED_DATA).values()))
    assert len(labels) == 15 and config.labels == labels  # the task file lists them in the data's order
    splits = load_splits(config.data, check=task.check)
    assert splits.problems == [] and len(splits.train) == 40 and len(splits.test) == 20  # every headline trains
    for record in splits.train + splits.test:
        assert list(record.candidates) == labels and record.output in labels
    assert "候选类别：" + "，".join(labels) in task.messages(splits.test[0])[-1]["content"]
    assert {r.id.split("-")[0] for r in splits.test} == {"test"}  # test headlines come from the dev file

    few = load_splits(config.data.model_copy(update={"test": tmp_path / "data" / FEW_CANDIDATES_FILE}), check=task.check)
    assert few.problems == [] and [r.id for r in few.test] == [r.id for r in splits.test]  # the same headlines
    for record, full in zip(few.test, splits.test):
        assert record.input == full.input and record.output in record.candidates and 3 <= len(record.candidates) <= 6
    again = tmp_path / "again"
    prepare_recipe("news-classify", again, n_train=40, n_test=20, log=lambda _: None)
    for name in ("train.jsonl", "test.jsonl", FEW_CANDIDATES_FILE):
        assert (again / "data" / name).read_bytes() == (tmp_path / "data" / name).read_bytes()


@needs_shared_data
def test_tfidf_baseline_beats_chance_on_tnews(tmp_path):
    config = load_config(prepare_recipe("news-classify", tmp_path, n_train=600, n_test=200, log=lambda _: None))
    task = build_task(config)
    splits = load_splits(config.data, check=task.check)
    baseline = build_baseline("tfidf-logreg", config)
    baseline.fit(splits.train)
    answers = baseline.answer(splits.test)
    probabilities = baseline.probabilities(splits.test)
    parsed = task.parse_all(answers, splits.test, probabilities)
    assert all(p.ok for p in parsed)
    chance = sum(1 / len(r.candidates) for r in splits.test) / len(splits.test)
    scores = task.score(parsed, splits.test)
    assert scores["accuracy"] > chance + 0.15 and 0 <= scores["ece"] < 1  # 15-way: chance 1/15
    for answer, probability in zip(answers, probabilities):
        assert len(probability) == 15 and sum(probability.values()) == pytest.approx(1.0)
        assert answer == max(probability, key=probability.get)


def test_tfidf_baseline_is_for_classify_tasks_only():
    with pytest.raises(ConfigError, match="tfidf-logreg is for kind 'classify'"):
        build_baseline("tfidf-logreg", RECIPES["complaints"].config())


@needs_shared_data
def test_role_play_data_is_disjoint_deterministic_alpaca(tmp_path):
    config = load_config(prepare_recipe("role-play", tmp_path, n_train=50, n_test=20, log=lambda _: None))
    task = build_task(config)
    splits = load_splits(config.data, check=task.check)
    assert splits.problems == [] and len(splits.test) == 20
    train_lines = {r.input for r in splits.train + splits.validation}
    assert not train_lines & {r.input for r in splits.test}
    messages = task.messages(splits.test[0])
    assert messages[0] == {"role": "system", "content": config.system} and "甄嬛" in config.system
    assert messages[1] == {"role": "user", "content": splits.test[0].input}
    rows = [json.loads(line) for line in (tmp_path / "data" / "test.jsonl").read_text(encoding="utf-8").splitlines()]
    assert rows == [json.loads(line) for line in (tmp_path / "data" / "test.jsonl").read_text("utf-8").splitlines()]
    assert all(set(row) == {"id", "instruction", "input", "output"} for row in rows)


def test_prepare_writes_data_and_keeps_an_identical_task_file_or_link(tmp_path):
    link = tmp_path / "task.yaml"
    link.symlink_to(REPO / "examples" / "policy-pages" / "task.yaml")
    assert prepare_recipe("policy-pages", tmp_path, n_train=3, n_test=2, log=lambda _: None) == link
    assert link.is_symlink()  # the same text: left alone
    config = load_config(link)
    assert config.data.train == tmp_path / "data" / "train.jsonl"
    assert len(load_splits(config.data, check=build_task(config).check).test) == 2


def test_cli_prepare_only_writes_the_task_file_and_data(tmp_path):
    result = CliRunner().invoke(app, ["demo", "policy-pages", "--prepare-only", "--work-dir", str(tmp_path),
                                      "--train-records", "4", "--test-records", "2"])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "task.yaml").read_text(encoding="utf-8") == RECIPES["policy-pages"].task_yaml()
    assert len((tmp_path / "data" / "test.jsonl").read_text(encoding="utf-8").splitlines()) == 2


@needs_shared_data
def test_demo_runs_a_recipe_end_to_end_on_a_tiny_model(tmp_path, tiny_qwen3_dir):
    """The wiring of `smalltune demo news-classify`: data, training, baseline and model passes, metrics."""
    result = CliRunner().invoke(app, ["demo", "news-classify", "--work-dir", str(tmp_path), "--model", str(tiny_qwen3_dir),
                                      "--train-records", "8", "--test-records", "3"])
    assert result.exit_code == 0, result.output
    metrics = json.loads((tmp_path / "news-classify" / "metrics.json").read_text(encoding="utf-8"))
    assert metrics["test_records"] == 3
    assert set(metrics["systems"]) == {"tfidf-logreg", "untuned", "untuned 3-shot", "fine-tuned"}
    assert "ece" in metrics["systems"]["fine-tuned"]["metrics"]  # answered by scoring the 15 labels
    few = json.loads((tmp_path / "news-classify" / "eval-test-few" / "metrics.json").read_text(encoding="utf-8"))
    assert few["test_records"] == 3 and set(few["systems"]) == {"tfidf-logreg", "fine-tuned"}
    assert "held-out news-classify (3 records)" in result.output
    assert "held-out news-classify, few candidates" in result.output
    assert "published: FewCLUE (Xu et al. 2021, arXiv:2107.07498)" in result.output and "0.564" in result.output


def test_complaints_demo_with_seeds_reports_the_spread_and_measures_the_challenge_set(tmp_path, tiny_qwen3_dir):
    """`smalltune demo --seeds 2`: two trainings on the same data, the untuned model measured once, the hand-written
    challenge set beside the held-out set, every metric's mean and range over the seeds in seeds.json."""
    result = CliRunner().invoke(app, ["demo", "--work-dir", str(tmp_path), "--model", str(tiny_qwen3_dir),
                                      "--train-records", "8", "--test-records", "2", "--seeds", "2"], env={"COLUMNS": "250"})
    assert result.exit_code == 0, result.output
    spread = json.loads((tmp_path / "seeds.json").read_text(encoding="utf-8"))
    assert spread["seeds"] == [42, 43]
    held_out, challenge = spread["results"]["held-out"], spread["results"]["hand-written challenge set"]
    assert len(held_out["fine-tuned"]["field_exact"]["values"]) == 2
    assert len(held_out["untuned"]["field_exact"]["values"]) == 1  # it does not depend on the training seed
    values = challenge["fine-tuned"]["record_exact"]["values"]
    assert challenge["fine-tuned"]["record_exact"]["mean"] == pytest.approx(sum(values) / 2)
    assert set(challenge) == {"complaint-rules", "untuned", "untuned 3-shot", "fine-tuned"}
    for seed in (42, 43):
        metrics = json.loads((tmp_path / f"seed-{seed}" / "complaints" / "eval-challenge" / "metrics.json").read_text(encoding="utf-8"))
        assert metrics["test_records"] == 48
    assert "mean (min-max) over seeds 42, 43" in result.output


def test_the_challenge_set_is_hand_labelled_extractively_and_never_trained_on(tmp_path):
    prepare_recipe("complaints", tmp_path, n_train=20, n_test=5)
    challenge = [json.loads(line) for line in (tmp_path / "data" / "challenge.jsonl").read_text(encoding="utf-8").splitlines()]
    assert len(challenge) >= 40 and len({r["style"] for r in challenge}) >= 10
    train = {json.loads(line)["input"] for line in (tmp_path / "data" / "train.jsonl").read_text(encoding="utf-8").splitlines()}
    for record in challenge:
        assert record["input"] not in train
        assert list(record["output"]) == ["name", "address", "email", "question"]
        for field, value in record["output"].items():
            assert value and record["input"].count(value) == 1, (record["id"], field)
    assert (REPO / "examples" / "complaints" / "challenge.jsonl").resolve().read_text(encoding="utf-8") == \
        (tmp_path / "data" / "challenge.jsonl").read_text(encoding="utf-8")
