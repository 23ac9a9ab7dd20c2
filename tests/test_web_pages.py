"""The web-pages recipe: generated HTML pages (deterministic, varied, gold content whole lines of the rendered
page, held-out sites and topics), the real labelled pages as a test file, the task file and `--prepare-only`."""

from __future__ import annotations

import json
from collections import Counter

import pytest
from typer.testing import CliRunner

from conftest import SHARED_DATA, write_jsonl
from smalltune.cli import app
from smalltune.config import load_config
from smalltune.data.html import page_text
from smalltune.data.records import load_records, load_splits
from smalltune.evaluation.evaluate import run_baseline
from smalltune.recipes.demo import RECIPES, prepare_recipe
from smalltune.recipes.synth.real_pages import REAL_FILE, answerable, real_pages
from smalltune.recipes.synth.web_pages import SITES, TEST_SITES, TEST_TOPICS, TRAIN_SITES, TRAIN_TOPICS, generate_web_pages
from smalltune.tasks import build_task
from smalltune.training.datacheck import check_data

needs_pages = pytest.mark.skipif(not (SHARED_DATA / "web-pages").is_dir(), reason="shared/data is not beside the repo")


@pytest.fixture(scope="module")
def splits():
    return generate_web_pages(n_train=48, n_test=16, seed=0)


@pytest.fixture(scope="module")
def config():
    """The recipe's task file, as shipped."""
    return RECIPES["web-pages"].config()


def test_same_seed_same_pages_other_seed_other_pages(splits):
    assert generate_web_pages(48, 16, seed=0) == splits
    assert [r["html"] for r in generate_web_pages(48, 16, seed=1)[0]] != [r["html"] for r in splits[0]]


def test_pages_vary_in_genre_length_date_and_boilerplate(splits):
    train, test = splits
    texts = [page_text(r["html"]) for r in train + test]
    assert set(Counter(r["genre"] for r in train)) == {"news", "gov", "blog", "forum"}
    contents = sorted(len(r["output"]["content"]) for r in train + test)
    assert contents[0] < 400 and 1000 <= contents[len(contents) // 2] <= 2500  # short main texts and the real median
    assert max(map(len, texts)) <= 6000  # the demo's pages stay moderate
    dates = [r["output"]["publishtime"] for r in train]
    assert None in dates and sum(d is not None for d in dates) > len(dates) / 2
    for marker in ("相关阅读", "上一篇：", "楼 ", "版权所有", "当前位置："):
        assert any(marker in text for text in texts), marker
    # the content is never the whole page: navigation, lists and footers around it
    assert all(len(r["output"]["content"]) < len(text) for r, text in zip(train + test, texts))


def test_held_out_sites_and_topics_never_reach_training(splits):
    train, test = splits
    assert not set(TRAIN_SITES) & set(TEST_SITES) and set(TRAIN_SITES) | set(TEST_SITES) == set(SITES)
    assert {r["layout"] for r in train} == set(TRAIN_SITES) and {r["layout"] for r in test} == set(TEST_SITES)
    held_out = [t for genre in TEST_TOPICS for t in TEST_TOPICS[genre] if t not in TRAIN_TOPICS[genre]]
    assert not any(topic in page_text(r["html"]) for r in train for topic in held_out)


def test_every_generated_page_checks_as_whole_lines_of_its_rendering(splits, config, tmp_path):
    """The gold content is whole lines of the page as page_text renders it: every record passes the data check,
    and its answer names line ranges whose text is the content."""
    train, test = splits
    task = build_task(config)
    data = config.data.model_copy(update={"train": write_jsonl(tmp_path / "train.jsonl", train),
                                          "test": write_jsonl(tmp_path / "test.jsonl", test)})
    loaded = load_splits(data, check=task.check)
    assert loaded.problems == [] and len(loaded.train) == 48 and len(loaded.test) == 16
    for record in loaded.train + loaded.test:
        answer = json.loads(task.answer(record))
        assert answer["content"] and all(start <= end for start, end in answer["content"])
        assert task.parse(task.answer(record), record).value == record.output


def test_recipe_fields_are_an_optional_date_and_lines(config):
    assert config.kind == "extract" and list(config.fields) == ["publishtime", "content"]
    assert config.fields["publishtime"].type == "date" and config.fields["publishtime"].optional
    assert config.fields["content"].type == "lines"
    assert config.eval.baselines == ["trafilatura", "gne"] and config.model.line_chars == 40
    assert RECIPES["web-pages"].other_tests[0].file == REAL_FILE


@needs_pages
def test_real_pages_normalise_dates_and_map_unknown_to_null():
    pages = {r["id"][:8]: r for r in real_pages(SHARED_DATA)}
    assert len(pages) == 24
    assert pages["3832838a"]["output"]["publishtime"] == "2005-04-27"  # "2005-04-27 14:32"
    assert pages["ab65832c"]["output"]["publishtime"] == "2003-07-24"  # "2003-7-24"
    assert pages["4fa9dfe4"]["output"]["publishtime"] is None  # "UNKNOWN"
    assert pages["c3f7d079"]["output"]["publishtime"] is None  # "2003-5": no whole date
    assert pages["c4d032a1"]["output"]["publishtime"] is None  # a name where the date belongs
    assert "<html" in pages["3832838a"]["html"].lower() and "吴宗宪" in page_text(pages["3832838a"]["html"])


@needs_pages
def test_real_file_holds_the_answerable_pages_and_checks_cleanly(tmp_path):
    config = load_config(prepare_recipe("web-pages", tmp_path, 2, 2, data_dir=SHARED_DATA, log=lambda _: None))
    real = tmp_path / "data" / REAL_FILE
    rows = [json.loads(line) for line in real.read_text(encoding="utf-8").splitlines()]
    assert len(rows) == sum(answerable(r) for r in real_pages(SHARED_DATA)) == 22
    loaded = load_records(real, config.data, check=build_task(config).check)
    assert loaded.problems == [] and len(loaded.records) == 22


@needs_pages
def test_cli_prepare_only_writes_the_task_file_the_generated_and_the_real_pages(tmp_path):
    result = CliRunner().invoke(app, ["demo", "web-pages", "--prepare-only", "--work-dir", str(tmp_path),
                                      "--data-dir", str(SHARED_DATA), "--train-records", "4", "--test-records", "2"])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "task.yaml").read_text(encoding="utf-8") == RECIPES["web-pages"].task_yaml()
    for name, count in (("train.jsonl", 4), ("test.jsonl", 2), (REAL_FILE, 22)):
        rows = (tmp_path / "data" / name).read_text(encoding="utf-8").splitlines()
        assert len(rows) == count and all("html" in json.loads(row) and "input" not in json.loads(row) for row in rows)


@needs_pages
def test_model_max_length_holds_the_generated_pages_and_all_but_the_longest_real_page(tmp_path):
    """`smalltune data check` with the real tokenizer: no problems, no generated page shortened, and of the real
    pages only the 398-line one (10,537 prompt tokens) loses its last lines."""
    config = load_config(prepare_recipe("web-pages", tmp_path, 12, 4, data_dir=SHARED_DATA, log=lambda _: None))
    report = check_data(config)
    assert report.problems == [] and report.shortened == [] and report.counts == {"train": 12, "validation": 0, "test": 4}
    real = check_data(config.model_copy(update={"data": config.data.model_copy(update={"test": tmp_path / "data" / REAL_FILE})}))
    assert real.problems == [] and real.counts["test"] == 22 and len(real.shortened) == 1


def test_page_baselines_answer_a_lines_field_with_the_lines_their_text_holds(splits, config, tmp_path):
    """trafilatura and GNE extract text; for a lines field it becomes the ranges of the page lines it holds, so
    the task's own parse and score judge them like the model."""
    _, test = splits
    data = config.data.model_copy(update={"train": write_jsonl(tmp_path / "t.jsonl", test[:1]),
                                          "test": write_jsonl(tmp_path / "test.jsonl", test[:6])})
    task = build_task(config)
    records = load_splits(data, check=task.check).test
    for name in ("trafilatura", "gne"):
        result = run_baseline(name, config, [], records)
        assert result.metrics["json_valid"] == 1.0 and result.metrics["field_f1.content"] > 0.3, name
        assert all(isinstance(json.loads(answer)["content"], list) for answer in result.answers)
