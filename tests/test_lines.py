"""`lines` fields: the input shown as numbered lines, the answer as line ranges, the result as the input's own text."""

from __future__ import annotations

import json

import pytest

from conftest import write_jsonl
from smalltune.config import DataConfig, TaskConfig, load_config
from smalltune.data.records import Record, load_records
from smalltune.errors import ConfigError
from smalltune.formatting import encode_example, shown_prompts
from smalltune.tasks import build_task
from smalltune.tasks.lines import input_lines, line_ranges, numbered, ranges_text

FIELDS = {"title": "标题", "content": {"type": "lines", "description": "正文"}}
PAGE = ("首页 > 政务公开 > 通知公告\n关于做好2025年安全生产工作的通知\n发布日期：2025-05-16\n\n"
        "　　各区县人民政府，市政府各部门：\n"
        "  为深入贯彻落实安全生产责任制，切实防范化解重大安全风险，现将有关事项通知如下。 \n"
        "一、加强组织领导\r\n二、强化隐患排查\n\n联系电话：023-12345678\n版权所有 © 重庆市人民政府")
BODY = ("各区县人民政府，市政府各部门：\n为深入贯彻落实安全生产责任制，切实防范化解重大安全风险，现将有关事项通知如下。\n"
        "一、加强组织领导\n二、强化隐患排查")
GOLD = {"title": "关于做好2025年安全生产工作的通知", "content": BODY}


def lines_task(**model):
    return build_task(TaskConfig(name="t", kind="extract", fields=FIELDS, data={"train": "x.jsonl"}, model=model))


def page(output=GOLD, text=PAGE, where="pages.jsonl:1") -> Record:
    return Record(id="p", where=where, input=text, output=output)


def test_the_prompt_numbers_each_non_blank_line_and_cuts_long_ones():
    assert numbered(PAGE, 12).split("\n")[:6] == [
        "[1]首页 > 政务公开 > …", "[2]关于做好2025年安全生…", "[3]发布日期：2025-05…",
        "[4]各区县人民政府，市政府各…", "[5]为深入贯彻落实安全生产责…", "[6]一、加强组织领导"]
    shown = lines_task(line_chars=12).messages(page())[-1]["content"]
    assert shown.endswith(numbered(PAGE, 12)) and "[9]版权所有 © 重庆市人民…" in shown
    assert "[[起, 止], …]" in shown  # the field's hint tells the model the answer's form
    assert lines_task(line_chars=None).messages(page())[-1]["content"].endswith("[9]版权所有 © 重庆市人民政府")


def test_gold_text_becomes_line_ranges_and_the_ranges_give_the_text_back():
    lines = input_lines(PAGE)
    assert line_ranges(BODY, lines) == [[4, 7]]
    assert ranges_text([[4, 7]], lines) == BODY
    spaced = "各区县人民政府, 市政府各部门:\n\n为深入贯彻落实安全生产责任制，切实防范化解重大安全风险，现将有关事项通知如下。一、加强组织领导"
    assert line_ranges(spaced, lines) == [[4, 6]]  # widths, spaces and line breaks do not matter
    assert line_ranges(BODY.replace("一、加强组织领导\n", "") + "\n联系电话：023-12345678", lines) == [[4, 5], [7, 8]]
    assert line_ranges("", lines) == []
    assert ranges_text([[7, 8], [4, 5], [5, 5]], lines) == ranges_text([[4, 5], [7, 8]], lines)  # sorted, each once


def test_a_few_characters_on_no_line_are_tolerated_and_a_line_cut_in_the_middle_is_not():
    lines = input_lines(PAGE)
    assert line_ranges(BODY + "\n图片", lines) == [[4, 7]]  # 2 of 72 characters on no line: 97% covered
    with pytest.raises(ValueError, match=r"only 53% of the text is whole lines of the input \(at least 95% must "
                                         r"be\): '为深入贯彻落实安全生产责任制,切实防范化' \(spaces removed\) is on no line"):
        line_ranges(BODY.replace("，现将有关事项通知如下。", ""), lines)


def test_an_answer_is_line_ranges_and_its_result_is_the_text_of_those_lines():
    task = lines_task()
    answer = task.answer(page())
    assert answer == '{"title": "关于做好2025年安全生产工作的通知", "content": [[4, 7]]}'
    assert task.parse(answer, page(None)).value == GOLD
    assert task.parse('{"title": "", "content": [[7, 7], [4, 5]]}', page(None)).value["content"] == (
        "各区县人民政府，市政府各部门：\n为深入贯彻落实安全生产责任制，切实防范化解重大安全风险，现将有关事项通知如下。\n二、强化隐患排查")
    for refs, problem in [([[4, 10]], "not within the input's lines 1..9"), ([[5, 4]], "ends before it starts"),
                          ("正文", "expected line ranges"), ([[4]], "expected line ranges")]:
        parsed = task.parse(json.dumps({"title": "", "content": refs}, ensure_ascii=False), page(None))
        assert not parsed.ok and parsed.error.startswith("field 'content': ") and problem in parsed.error


def test_the_data_check_names_file_line_and_field_of_a_text_that_is_not_whole_lines(tmp_path):
    task = lines_task()
    cut = {**GOLD, "content": "各区县人民政府，市政府各部门：为深入贯彻落实安全生产责任制"}
    path = write_jsonl(tmp_path / "pages.jsonl", [{"input": PAGE, "output": GOLD}, {"input": PAGE, "output": cut}])
    loaded = load_records(path, DataConfig(train=path), check=task.check)
    assert len(loaded.records) == 1
    (problem,) = loaded.problems
    assert problem.startswith(f"{path}:2: field 'content': only ") and "is on no line of its own" in problem
    assert "make the field type: string" in problem


def test_scores_compare_the_text_with_the_gold_text():
    task = lines_task()
    golds = [page()]
    right = task.score(task.parse_all([task.answer(page())], golds), golds)
    assert right["field_exact.content"] == 1.0 and right["field_f1.content"] == 1.0 and right["hallucinated"] == 0.0
    short = task.score(task.parse_all(['{"title": "", "content": [[4, 5]]}'], golds), golds)
    assert short["field_exact.content"] == 0.0 and 0.5 < short["field_f1.content"] < 1.0


def test_a_lines_field_is_never_null_nor_marked_extractive(tmp_path):
    for extra, message in [("optional: true", "never null"), ("extractive: true", "built from the input's own lines")]:
        task_file = tmp_path / "task.yaml"
        task_file.write_text(f"name: t\nkind: extract\nfields:\n  content: {{type: lines, {extra}}}\n"
                             "data: {train: x.jsonl}\n", encoding="utf-8")
        with pytest.raises(ConfigError, match=message):
            load_config(task_file)


def test_the_line_numbered_prompt_is_the_same_in_training_and_inference(qwen_tokenizer):
    task = lines_task(line_chars=12, max_length=1024)
    example = encode_example(qwen_tokenizer, task, page(), 1024, enable_thinking=False)
    (shown,) = shown_prompts(qwen_tokenizer, task, [page(None)], task.config)
    assert not example.truncated and example.input_ids[: example.completion_mask.index(1)] == shown.ids
    assert "[5]为深入贯彻落实安全生产责…\n" in qwen_tokenizer.decode(shown.ids)


def test_a_numbered_input_too_long_to_show_loses_whole_lines_at_its_end(qwen_tokenizer):
    task = lines_task(line_chars=12, max_length=256)
    long_page = PAGE + "".join(f"\n相关链接{i}：关于印发某某市某某工作方案的通知全文" for i in range(60))
    (shown,) = shown_prompts(qwen_tokenizer, task, [page(None, long_page)], task.config)
    assert shown.truncated and len(shown.ids) <= 256 and shown.problem is None
    assert long_page.startswith(shown.record.input) and long_page[len(shown.record.input)] == "\n"  # at a line end
    kept = len(input_lines(shown.record.input))
    prompt = qwen_tokenizer.decode(shown.ids)
    assert 9 < kept < 69 and f"\n[{kept}]相关链接" in prompt and f"[{kept + 1}]" not in prompt


TOPICS = ("安全生产", "垃圾分类", "老旧小区改造", "营商环境", "数字政府", "养老服务", "课后服务", "粮食安全")


def policy_pages(n: int, seed: int) -> list[dict]:
    """Little pages: navigation, a title, two to four body lines, a footer; the body is the content."""
    import random

    rng = random.Random(seed)
    rows = []
    for i in range(n):
        topic = rng.choice(TOPICS)
        body = [f"第{j}条 各单位要把{rng.choice(TOPICS)}工作放在重要位置。" for j in range(1, rng.randint(3, 5))]
        lines = ["首页 > 通知公告", f"关于做好{topic}工作的通知", *body, "版权所有"]
        rows.append({"id": f"p{i}", "input": "\n".join(lines), "output": {"title": lines[1], "content": "\n".join(body)}})
    return rows


def test_a_tiny_model_trained_on_a_lines_field_answers_line_ranges_whose_result_is_input_lines(tmp_path,
                                                                                                tiny_qwen3_dir):
    from smalltune.inference.predict import predict_file
    from smalltune.training.run import train

    config = TaskConfig(
        name="pages", kind="extract", fields=FIELDS,
        data={"train": write_jsonl(tmp_path / "train.jsonl", policy_pages(8, seed=1)), "validation_share": 0,
              "test_share": 0},
        model={"name": str(tiny_qwen3_dir), "max_length": 256, "dtype": "float32"},
        train={"epochs": 1, "batch_size": 4, "learning_rate": 5e-3, "save_steps": 100, "report_to": "none"},
        infer={"batch_size": 4, "max_new_tokens": 48}, output_dir=tmp_path / "runs",
    )
    run_dir = train(config)
    tests = policy_pages(4, seed=2)
    inputs = write_jsonl(tmp_path / "in.jsonl", [{"id": r["id"], "input": r["input"]} for r in tests])
    assert predict_file(run_dir, inputs, tmp_path / "out.jsonl") == 4
    rows = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text(encoding="utf-8").splitlines()]
    assert all(row["error"] is None for row in rows), rows  # ascending ranges: every answer ends, well within 48 tokens
    for row, test in zip(rows, tests):
        references = json.loads(row["answer"])["content"]
        assert all(1 <= start <= end <= 6 for start, end in references)  # the raw answer keeps the line numbers
        lines = test["input"].split("\n")
        assert all(line in lines for line in row["result"]["content"].split("\n") if row["result"]["content"])
        assert row["result"]["content"] == ranges_text(references, input_lines(test["input"]))
