"""`smalltune data convert`: alpaca, fudan-news and messages records to the one JSONL a task file reads."""

from __future__ import annotations

import dataclasses
import json

import pytest
from typer.testing import CliRunner

from smalltune.cli import app
from smalltune.config import DataConfig, TaskConfig
from smalltune.data.convert import SOURCE_FORMATS, convert_file
from smalltune.data.records import load_records
from smalltune.errors import ConfigError, DataError, OutputError
from smalltune.tasks import build_task
from conftest import write_jsonl

ALPACA = [
    {"instruction": "判断情感", "input": "这家店很好吃", "output": "正面", "system": "你是助手。"},
    {"id": "r2", "instruction": "续写", "input": "", "output": "好的", "history": [["你好", "您好"], ["在吗", "在"]]},
    {"instruction": "抽取", "input": "张三住在北京", "output": {"name": "张三"}, "source": "crawl-7"},
]
FUDAN = [
    {"text": "国足客场取胜", "category": ["体育", "财经", "科技"], "output": "体育"},
    {"text": "央行下调准备金率", "category": "财经，体育 ,科技", "output": "财经"},
]
MESSAGES = [
    {"messages": [{"role": "system", "content": "你是甄嬛。"}, {"role": "user", "content": "娘娘"},
                  {"role": "assistant", "content": "何事？"}, {"role": "user", "content": "皇上来了"},
                  {"role": "assistant", "content": "快请。"}]},
    {"id": 7, "messages": [{"role": "user", "content": "你好"}]},
]


def _read(path, data: DataConfig):
    loaded = load_records(path, data.model_copy(update={"train": path}), require_output=False)
    assert loaded.problems == []
    return [dataclasses.replace(r, where="") for r in loaded.records]


@pytest.mark.parametrize(("source_format", "rows"), [("alpaca", ALPACA), ("fudan-news", FUDAN), ("messages", MESSAGES)])
def test_converted_records_read_back_as_the_source_records(tmp_path, source_format, rows):
    source = write_jsonl(tmp_path / "in.jsonl", rows)
    target = tmp_path / "out.jsonl"
    converted = convert_file(source, target, source_format)
    assert converted.count == len(rows)
    assert ("columns" in converted.data) == (source_format == "fudan-news")  # per-record label choices
    original = _read(source, DataConfig(train=source, **SOURCE_FORMATS[source_format]))
    assert _read(target, DataConfig(**converted.data)) == original
    assert len(target.read_text(encoding="utf-8").splitlines()) == len(rows)


def test_target_rows_are_plain_alpaca_with_ids_and_kept_columns(tmp_path):
    source = tmp_path / "in.json"
    source.write_text(json.dumps(ALPACA, ensure_ascii=False, indent=2), encoding="utf-8")  # a JSON array
    target = tmp_path / "out.jsonl"
    convert_file(source, target, "alpaca")
    rows = [json.loads(line) for line in target.read_text(encoding="utf-8").splitlines()]
    assert rows[0] == {"id": "in-2", "system": "你是助手。", "instruction": "判断情感", "input": "这家店很好吃", "output": "正面"}
    assert rows[1]["id"] == "r2" and rows[1]["history"] == [["你好", "您好"], ["在吗", "在"]]
    assert rows[2]["output"] == {"name": "张三"} and rows[2]["source"] == "crawl-7"


def test_converted_fudan_news_feeds_a_classify_task_without_labels(tmp_path):
    target = tmp_path / "out.jsonl"
    converted = convert_file(write_jsonl(tmp_path / "in.jsonl", FUDAN), target, "fudan-news")
    assert converted.data == {"train": str(target), "format": "alpaca", "columns": {"candidates": "candidates"}}
    config = TaskConfig(name="news", kind="classify", data=converted.data)
    task = build_task(config)
    loaded = load_records(target, config.data, check=task.check)
    assert loaded.problems == []
    assert "候选类别：财经，体育，科技" in task.messages(loaded.records[1])[-1]["content"]


def test_invalid_records_are_listed_by_file_and_line_and_nothing_is_written(tmp_path):
    source = write_jsonl(tmp_path / "in.jsonl", [FUDAN[0], {"text": "无候选", "output": "体育"}, FUDAN[1],
                                                 {"text": "坏候选", "category": 3}])
    target = tmp_path / "out.jsonl"
    with pytest.raises(DataError) as caught:
        convert_file(source, target, "fudan-news")
    message = str(caught.value)
    assert "2 invalid record(s)" in message
    assert f"{source}:2: missing 'category'" in message and f"{source}:4: 'category' must be a list" in message
    assert not target.exists()


def test_broken_json_names_the_line(tmp_path):
    source = tmp_path / "in.jsonl"
    source.write_text('{"instruction": "a", "input": "b", "output": "c"}\n{"instruction": \n', encoding="utf-8")
    with pytest.raises(DataError, match=rf"{source}:2: not valid JSON"):
        convert_file(source, tmp_path / "out.jsonl", "alpaca")


def test_unknown_source_format_and_overwriting_the_input_are_refused(tmp_path):
    source = write_jsonl(tmp_path / "in.jsonl", ALPACA[:1])
    with pytest.raises(ConfigError, match="alpaca, fudan-news, messages"):
        convert_file(source, tmp_path / "out.jsonl", "sharegpt")
    with pytest.raises(OutputError, match="overwrite the input"):
        convert_file(source, source, "alpaca")


def test_converting_into_a_folder_is_a_clear_error(tmp_path):
    source = write_jsonl(tmp_path / "in.jsonl", ALPACA[:1])
    (tmp_path / "out").mkdir()
    with pytest.raises(OutputError, match=r"out: is a folder; give the JSONL file to write, e\.g\. .*out/in\.jsonl"):
        convert_file(source, tmp_path / "out", "alpaca")


def test_cli_converts_and_reports_errors_in_one_line(tmp_path):
    runner = CliRunner()
    source = write_jsonl(tmp_path / "in.jsonl", MESSAGES)
    target = tmp_path / "out.jsonl"
    result = runner.invoke(app, ["data", "convert", str(source), str(target), "--from", "messages"])
    assert result.exit_code == 0, result.output
    assert "wrote 2 records" in result.output and "format: alpaca" in result.output and target.is_file()
    bad = write_jsonl(tmp_path / "bad.jsonl", [{"messages": [{"role": "bot", "content": "x"}]}])
    result = runner.invoke(app, ["data", "convert", str(bad), str(target), "--from", "messages"])
    assert result.exit_code != 0 and isinstance(result.exception, DataError)
    assert f"{bad}:1: 'messages'[0] has role 'bot'" in str(result.exception)
