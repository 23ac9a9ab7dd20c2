"""The synthetic policy pages: deterministic, held-out layouts, extractive answers, HTML and text of one page."""

from __future__ import annotations

import datetime as dt
import html
import json
import re
from importlib import resources

import pytest
import yaml

from smalltune.evaluation.baselines import build_baseline
from smalltune.config import TaskConfig
from smalltune.data.records import load_records
from smalltune.errors import DataError
from smalltune.formatting import encode_example
from smalltune.recipes.synth.policy_pages import (
    LAYOUTS, TEST_LAYOUTS, TEST_TOPICS, TRAIN_LAYOUTS, TRAIN_TOPICS, format_date, generate_pages,
    visible_text, write_pages,
)
from smalltune.tasks import build_task
from smalltune.tasks.text import normalise_date


@pytest.fixture(scope="module")
def splits():
    return generate_pages(n_train=36, n_test=12, seed=0)


@pytest.fixture(scope="module")
def records(splits):
    return splits[0] + splits[1]


@pytest.fixture(scope="module")
def recipe() -> TaskConfig:
    raw = yaml.safe_load(resources.files("smalltune.recipes").joinpath("policy-pages.yaml").read_text("utf-8"))
    return TaskConfig.model_validate(raw)


def test_same_seed_same_pages_other_seed_other_pages(splits):
    assert generate_pages(36, 12, seed=0) == splits
    other_train, _ = generate_pages(36, 12, seed=1)
    assert [r["input"] for r in other_train] != [r["input"] for r in splits[0]]


def test_held_out_layouts_and_topics_never_reach_training(splits):
    train, test = splits
    assert not set(TRAIN_LAYOUTS) & set(TEST_LAYOUTS) and set(TRAIN_LAYOUTS) | set(TEST_LAYOUTS) == set(LAYOUTS)
    assert {r["layout"] for r in train} == set(TRAIN_LAYOUTS)
    assert {r["layout"] for r in test} == set(TEST_LAYOUTS)
    for r in train:  # the held-out sites' tell-tale lines and topics are absent from every training page
        assert "文件库" not in r["input"] and "发布人：" not in r["input"] and "\n时间：" not in r["input"]
        assert not any(topic in r["input"] for topic in TEST_TOPICS)
    assert all("文件库" in r["input"] or "\n时间：" in r["input"] for r in test)
    assert all(any(topic in r["input"] for topic in TEST_TOPICS) for r in test)
    assert not set(TRAIN_TOPICS) & set(TEST_TOPICS)
    assert len({r["input"] for r in train + test}) == len(train + test)


@pytest.mark.parametrize(("text", "expected"), [
    ("2025-05-16", "2025-05-16"),
    ("2025年5月16日", "2025-05-16"),
    ("2025/5/6", "2025-05-06"),
    ("发布时间：2025-05-16 10:30:00", "2025-05-16"),
    ("[ 2025.05.16 ]", "2025-05-16"),
    ("2025 年 12 月 1 日", "2025-12-01"),
    ("发布日期：2025年05月16日　来源：市政府办公厅", "2025-05-16"),
    ("2025-13-40", ""),
    ("浏览次数：1234", ""),
    (None, ""),
])
def test_normalise_date(text, expected):
    assert normalise_date(text) == expected


def test_every_arabic_date_style_normalises_back():
    day = dt.datetime(2024, 3, 7, 9, 5, 2)
    styles = ["iso", "iso_minute", "iso_second", "cn", "cn_padded", "slash", "slash_padded", "dot"]
    assert {normalise_date(format_date(day, style)) for style in styles} == {"2024-03-07"}
    assert format_date(day, "cn_numeral") == "二〇二四年三月七日"


def test_answers_are_on_the_page(records):
    for r in records:
        text, out = r["input"], r["output"]
        assert list(out) == ["title", "publishtime", "content"]
        assert out["title"] in text and out["content"] in text, r["id"]
        assert re.fullmatch(r"\d{4}-\d{2}-\d{2}", out["publishtime"])
        shown = {normalise_date(m.group()) for m in re.finditer(r"\d{4}\s*[-/.年]\s*\d{1,2}\s*[-/.月]\s*\d{1,2}", text)}
        assert out["publishtime"] in shown, r["id"]


def test_content_is_the_body_only(records):
    for r in records:
        content = r["output"]["content"]
        assert content.startswith("各") and content.endswith("。"), r["id"]
        for boilerplate in ("附件", "文件下载", "版权所有", "ICP备", "当前位置", "〔", "此件公开发布"):
            assert boilerplate not in content, (r["id"], boilerplate)


def test_pages_carry_the_usual_clutter(records):
    text = "\n".join(r["input"] for r in records)
    for clutter in ("当前位置：", "索引号", "发文字号", "成文日期", "〕", "号", "附件：", "文件下载：", "版权所有",
                    "ICP备", "公网安备", "二〇"):
        assert clutter in text, clutter


def test_html_and_text_describe_the_same_page(records):
    for r in records:
        page = r["html"]
        assert visible_text(page) == r["input"]
        assert f"<title>{html.escape(r['output']['title'])}_" in page
        for paragraph in r["output"]["content"].split("\n"):
            assert f">{html.escape(paragraph)}</p>" in page


def test_body_lengths_follow_the_setting():
    short, _ = generate_pages(20, 0, seed=2)
    long, _ = generate_pages(6, 0, seed=2, body_chars=(1500, 2000))
    assert all(200 <= len(r["output"]["content"]) <= 750 for r in short)
    assert all(1500 <= len(r["output"]["content"]) <= 2300 for r in long)


def test_recipe_lengths_never_cut_the_answer(recipe, qwen_tokenizer):
    """Demo-sized and ~2,000-character pages fit model.max_length whole; their answers fit max_new_tokens."""
    task = build_task(recipe)
    pages = generate_pages(4, 0, seed=5)[0] + generate_pages(4, 0, seed=5, body_chars=(1800, 2000))[0]
    for row in pages:
        record = _record(row)
        example = encode_example(qwen_tokenizer, task, record, recipe.model.max_length, False)
        assert not example.truncated, row["id"]
        answer_tokens = len(qwen_tokenizer(task.answer(record), add_special_tokens=False)["input_ids"])
        assert answer_tokens < recipe.infer.max_new_tokens, row["id"]


def _record(row: dict):
    from smalltune.data.records import Record

    return Record(id=row["id"], where=row["id"], input=row["input"], output=row["output"], extra={"html": row["html"]})


@pytest.mark.parametrize("name", ["trafilatura", "gne"])
def test_rule_baselines_answer_in_the_task_format(name, recipe, tmp_path):
    """Read through the recipe's data config, so the page HTML reaches the baseline via Record.extra."""
    _, test_path = write_pages(tmp_path, n_train=1, n_test=4, seed=0)
    records = load_records(test_path, recipe.data.model_copy(update={"train": test_path})).records
    assert all("html" in r.extra and r.extra["layout"] in TEST_LAYOUTS for r in records)
    baseline = build_baseline(name, recipe)
    baseline.fit([])
    task = build_task(recipe)
    parsed = [task.parse(answer, r) for answer, r in zip(baseline.answer(records), records)]
    assert all(p.ok and list(p.value) == list(recipe.fields) for p in parsed)
    assert all(re.fullmatch(r"(\d{4}-\d{2}-\d{2})?", p.value["publishtime"]) for p in parsed)
    metrics = task.score(parsed, records)
    assert metrics["schema_ok"] == 1.0
    assert metrics["field_exact.title"] >= 0.5 and metrics["field_exact.publishtime"] >= 0.5  # the mapping is right


def test_rule_baseline_without_html_names_the_record(recipe, tmp_path):
    path = tmp_path / "pages.jsonl"
    path.write_text(json.dumps({"input": "页面", "output": {"title": "", "publishtime": "", "content": ""}}) + "\n",
                    encoding="utf-8")
    records = load_records(path, recipe.data.model_copy(update={"train": path})).records
    with pytest.raises(DataError, match=rf"{path}:1: .*'html' column"):
        build_baseline("gne", recipe).answer(records)
