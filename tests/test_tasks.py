"""Parsing and scoring per task kind: what a user reads in the eval table."""

from __future__ import annotations

import pytest

from smalltune.config import TaskConfig
from smalltune.data.records import Record
from smalltune.tasks import Parsed, build_task
from smalltune.tasks.metrics import char_f1

FIELDS = {"name": "姓名", "email": "邮箱"}


def task(kind: str, **extra):
    return build_task(TaskConfig(name="t", kind=kind, data={"train": "x.jsonl"}, **extra))


def rec(output, candidates=()) -> Record:
    return Record(id="1", where="f:1", input="文本", output=output, candidates=tuple(candidates))


def test_extract_answer_is_canonical_whether_output_was_an_object_or_a_string():
    t = task("extract", fields=FIELDS)
    as_object = t.answer(rec({"email": "a@b.cn", "name": "李雷"}))
    as_string = t.answer(rec('{"name": "李雷", "email": "a@b.cn"}'))
    assert as_object == as_string == '{"name": "李雷", "email": "a@b.cn"}'


def test_extract_parse_reads_json_inside_a_code_fence_and_reports_garbage():
    t = task("extract", fields=FIELDS)
    parsed = t.parse('```json\n{"name": "李雷", "email": "a@b.cn"}\n```', rec({}))
    assert parsed.ok and parsed.value["name"] == "李雷"
    assert not t.parse("我不知道", rec({})).ok
    assert "invalid JSON" in t.parse('{"name": "李', rec({})).error


def test_extract_check_names_missing_and_extra_fields():
    t = task("extract", fields=FIELDS)
    message = t.check(rec({"name": "李雷", "phone": "1"}))
    assert "email" in message and "phone" in message
    assert t.check(rec({"name": "李雷", "email": "x"})) is None


def test_extract_score_counts_fields_records_and_validity():
    t = task("extract", fields=FIELDS)
    golds = [rec({"name": "李雷", "email": "a@b.cn"}), rec({"name": "韩梅梅", "email": "h@m.cn"})]
    parsed = [Parsed({"name": "李雷", "email": "a@b.cn "}), Parsed({"name": "韩梅", "email": "h@m.cn"})]
    scores = t.score(parsed, golds)
    assert scores["field_exact"] == 0.75 and scores["record_exact"] == 0.5 and scores["json_valid"] == 1.0
    assert scores["field_exact.name"] == 0.5 and scores["field_exact.email"] == 1.0
    assert t.score([Parsed(None, "bad"), parsed[1]], golds)["json_valid"] == 0.5


def test_full_width_and_half_width_punctuation_compare_equal():
    t = task("extract", fields={"name": "姓名"})
    assert t.score([Parsed({"name": "李雷（先生）"})], [rec({"name": "李雷(先生)"})])["field_exact"] == 1.0


def test_classify_uses_record_candidates_and_parses_a_mentioned_label():
    t = task("classify", labels=["体育", "财经"])
    r = rec("科技", candidates=["科技", "军事"])
    assert "科技，军事" in t.messages(r)[-1]["content"]
    assert t.parse("类别：科技。", r).value == "科技"
    assert not t.parse("体育", r).ok
    assert "not one of the labels" in t.check(rec("农业"))


def test_classify_score_accuracy_macro_f1_and_invalid_share():
    t = task("classify", labels=["体育", "财经"])
    golds = [rec("体育"), rec("财经"), rec("财经")]
    scores = t.score([Parsed("体育"), Parsed("体育"), Parsed(None, "x")], golds)
    assert round(scores["accuracy"], 3) == 0.333 and round(scores["invalid_label"], 3) == 0.333
    assert round(scores["macro_f1"], 3) == round((2 / 3 + 0) / 2, 3)


def test_classify_expected_calibration_error_from_the_answers_probabilities():
    """Four answers: two at 0.9 confidence (one right), two at 0.55 (both right).
    Bin 0.9-1.0: accuracy 0.5 vs confidence 0.9; bin 0.5-0.6: accuracy 1.0 vs 0.55.
    ECE = 2/4 * |0.5 - 0.9| + 2/4 * |1.0 - 0.55| = 0.2 + 0.225 = 0.425."""
    t = task("classify", labels=["体育", "财经"])
    golds = [rec("体育"), rec("财经"), rec("体育"), rec("财经")]
    sure, leaning = {"体育": 0.9, "财经": 0.1}, {"体育": 0.55, "财经": 0.45}
    parsed = t.parse_all(["体育", "体育", "体育", "财经"], golds, [sure, sure, leaning, {"体育": 0.45, "财经": 0.55}])
    assert t.score(parsed, golds)["ece"] == pytest.approx(0.425)
    bins = t.details(parsed, golds)["calibration"]["bins"]
    assert [(b["low"], b["count"], b["accuracy"]) for b in bins] == [(0.5, 2, 1.0), (0.9, 2, 0.5)]
    assert bins[0]["confidence"] == pytest.approx(0.55) and bins[1]["confidence"] == pytest.approx(0.9)
    assert "ece" not in t.score([Parsed("体育")] * 4, golds)  # answers without probabilities get no ECE


def test_chat_messages_put_history_between_system_and_user():
    t = task("chat", system="你是甄嬛。")
    r = Record(id="1", where="f:1", input="娘娘", output="嗯", history=({"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}))
    assert [m["role"] for m in t.messages(r)] == ["system", "user", "assistant", "user"]
    assert t.messages(r)[-1]["content"] == "娘娘"


def test_char_f1():
    assert char_f1("本宫知道了", "本宫知道了") == 1.0
    assert char_f1("", "有") == 0.0
    assert 0 < char_f1("本宫知道", "本宫不知道了") < 1


def test_bootstrap_interval_brackets_the_score_and_narrows_with_agreement():
    from smalltune.evaluation.evaluate import bootstrap_intervals

    t = task("classify", labels=["体育", "财经"])
    golds = [rec("体育")] * 20 + [rec("财经")] * 20
    half = [Parsed("体育")] * 40
    lo, hi = bootstrap_intervals(t, half, golds, rounds=300)["accuracy"]
    assert lo < 0.5 < hi and hi - lo > 0.1
    assert bootstrap_intervals(t, [Parsed(r.output) for r in golds], golds, rounds=300)["accuracy"] == (1.0, 1.0)
