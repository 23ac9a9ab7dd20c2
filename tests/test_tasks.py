"""Parsing and scoring per task kind: what a user reads in the eval table."""

from __future__ import annotations

import json

import pytest

from conftest import write_jsonl
from smalltune.config import DataConfig, TaskConfig
from smalltune.data.records import Record, load_records
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


def test_extract_intervals_from_per_record_counts_equal_scoring_every_resample_whole():
    """The bootstrap counts each answer once (`record_facts`) and sums the counts of each resample: the same
    intervals as scoring every resample from its answers, for every kind of field."""
    import random

    from smalltune.evaluation.evaluate import bootstrap_intervals

    t = task("extract", fields={"name": "姓名", "tags": {"type": "list"}, "level": {"type": "choice", "choices": ["低", "高"]},
                                "note": {"optional": True}})
    rng, records, answers = random.Random(3), [], []
    for i in range(30):
        gold = {"name": rng.choice("张李王"), "tags": rng.sample("abc", rng.randint(0, 2)), "level": rng.choice(["低", "高"]),
                "note": rng.choice([None, "备注"])}
        records.append(Record(id=str(i), where=f"f:{i}", input=f"{gold['name']} abc 低高 备注", output=gold))
        answer = {k: v if rng.random() < 0.7 else {"name": "赵", "tags": ["a", "z"], "level": "低", "note": "备注"}[k]
                  for k, v in gold.items()}
        answers.append("garbage" if i % 9 == 0 else json.dumps(answer, ensure_ascii=False))
    parsed = t.parse_all(answers, records)
    whole = intervals_scoring_every_resample(t, parsed, records)
    assert bootstrap_intervals(t, parsed, records, rounds=50) == whole
    assert {"macro_f1.level", "list_f1.tags", "null_correct.note", "hallucinated"} <= set(whole)


def test_chat_intervals_from_per_reply_scores_equal_scoring_every_resample_whole():
    from smalltune.evaluation.evaluate import bootstrap_intervals

    t = task("chat")
    records = [Record(id=str(i), where=f"f:{i}", input="问", output="本宫知道了，退下吧"[i % 5:]) for i in range(20)]
    parsed = [Parsed("本宫不知道"[: i % 6]) for i in range(20)]
    assert bootstrap_intervals(t, parsed, records, rounds=50) == intervals_scoring_every_resample(t, parsed, records)


def intervals_scoring_every_resample(t, parsed, records, rounds: int = 50) -> dict:
    """The bootstrap as `score` alone gives it: every resample scored from its answers (rng seed 0, 2.5-97.5%)."""
    import random

    rng, samples = random.Random(0), {}
    for _ in range(rounds):
        pick = [rng.randrange(len(records)) for _ in records]
        for metric, value in t.score([parsed[i] for i in pick], [records[i] for i in pick]).items():
            samples.setdefault(metric, []).append(value)
    return {metric: (sorted(v)[int(0.025 * rounds)], sorted(v)[int(0.975 * rounds)]) for metric, v in samples.items()}


# ---- typed extraction fields ---------------------------------------------------------------------

TYPED = {"name": "姓名", "email": {"description": "邮箱", "optional": True}, "companies": {"type": "list"},
         "priority": {"type": "choice", "choices": ["低", "中", "高"]}, "amount": {"type": "number"},
         "signed": {"type": "date"}, "urgent": {"type": "boolean"}}
GOLD = {"name": "李雷", "email": None, "companies": ["阿里巴巴", "腾讯"], "priority": "高", "amount": 300,
        "signed": "2025年5月16日", "urgent": True}
CANONICAL = {**GOLD, "signed": "2025-05-16"}


def test_a_typed_answer_is_canonical_json_and_parses_back_to_its_values():
    t = task("extract", fields=TYPED)
    answer = t.answer(rec(GOLD))
    assert answer == ('{"name": "李雷", "email": null, "companies": ["阿里巴巴", "腾讯"], "priority": "高", '
                      '"amount": 300, "signed": "2025-05-16", "urgent": true}')
    assert t.parse(answer, rec({})).value == CANONICAL


@pytest.mark.parametrize(("field", "value", "message"), [
    ("companies", 3, "field 'companies': expected a list of strings, got 3"),
    ("companies", ["腾讯", "腾讯"], "field 'companies': \"腾讯\" is listed twice"),
    ("companies", ["腾讯", ""], "field 'companies': a list item is empty"),
    ("priority", "很高", "field 'priority': expected one of 低, 中, 高, got \"很高\""),
    ("priority", None, "optional: true"),
    ("amount", "300", "field 'amount': expected a number, got \"300\""),
    ("amount", True, "field 'amount': expected a number, got true"),
    ("urgent", "yes", "field 'urgent': expected true or false"),
    ("signed", "下周", "field 'signed': expected a date (YYYY-MM-DD)"),
    ("email", "", "field 'email': write null"),
    ("name", None, "field 'name': expected a string, got null"),
])
def test_check_names_the_field_and_the_type_a_training_value_lacks(field, value, message):
    problem = task("extract", fields=TYPED).check(rec({**GOLD, field: value}))
    assert problem is not None and message in problem


def test_check_refuses_a_training_list_longer_than_its_max_items():
    fields = {**TYPED, "companies": {"type": "list", "max_items": 2}}
    assert task("extract", fields=fields).check(rec(GOLD)) is None
    problem = task("extract", fields=fields).check(rec({**GOLD, "companies": ["阿里巴巴", "腾讯", "百度"]}))
    assert problem is not None and "field 'companies': 3 items, more than max_items (2)" in problem


def test_the_data_check_reports_a_wrong_type_at_its_file_and_line(tmp_path):
    t = task("extract", fields=TYPED)
    path = write_jsonl(tmp_path / "f.jsonl", [{"input": "a", "output": GOLD}, {"input": "b", "output": {**GOLD, "companies": 3}}])
    loaded = load_records(path, DataConfig(train=path), check=t.check)
    assert len(loaded.records) == 1
    assert loaded.problems == [f"{path}:2: field 'companies': expected a list of strings, got 3"]


def test_parse_tidies_harmless_slips_and_refuses_a_wrong_type_naming_the_field():
    t = task("extract", fields=TYPED)
    slips = {**GOLD, "email": "", "companies": ["腾讯", "腾讯", "阿里巴巴"], "signed": "2025/5/16", "name": None}
    assert t.parse(json.dumps(slips, ensure_ascii=False), rec({})).value == {
        **CANONICAL, "email": None, "companies": ["腾讯", "阿里巴巴"], "name": ""}
    for field, value in [("companies", "腾讯"), ("priority", "很高"), ("amount", "300"), ("urgent", 1)]:
        parsed = t.parse(json.dumps({**GOLD, field: value}, ensure_ascii=False), rec({}))
        assert not parsed.ok and parsed.error.startswith(f"field '{field}': expected")
    integer = task("extract", fields={"n": {"type": "integer"}})
    assert integer.parse('{"n": 3}', rec({})).ok and not integer.parse('{"n": 2.5}', rec({})).ok


def test_an_absent_optional_value_is_null_and_a_null_answer_scores_as_correct():
    t = task("extract", fields=TYPED)
    golds = [rec(GOLD), rec({**GOLD, "email": "li@lei.cn"})]
    right = t.parse_all([t.answer(g) for g in golds], golds)
    assert right[0].value["email"] is None
    scores = t.score(right, golds)
    assert scores["field_exact.email"] == 1.0 and scores["null_correct.email"] == 1.0
    assert scores["null_invented"] == 0.0 and scores["record_exact"] == 1.0
    invented = t.score([Parsed({**CANONICAL, "email": "x@y.cn"}), right[1]], golds)
    assert invented["null_invented.email"] == 1.0 and invented["null_correct"] == 0.0
    assert invented["field_exact.email"] == 0.5


def test_list_fields_get_set_precision_recall_and_f1_per_field_and_over_all_items():
    """companies: found {阿里巴巴, 腾讯, 百度} of {阿里巴巴, 腾讯, 京东}, then nothing of {美团}: tp 2, fp 1, fn 2.
    people: found {张三} of {张三}, then {李四} of none: tp 1, fp 1, fn 0. Over both: tp 3, fp 2, fn 2."""
    t = task("extract", fields={"companies": {"type": "list"}, "people": {"type": "list"}})
    golds = [rec({"companies": ["阿里巴巴", "腾讯", "京东"], "people": ["张三"]}), rec({"companies": ["美团"], "people": []})]
    parsed = [Parsed({"companies": ["阿里巴巴 ", "腾讯", "百度"], "people": ["张三"]}), Parsed({"companies": [], "people": ["李四"]})]
    scores = t.score(parsed, golds)
    assert scores["list_precision.companies"] == pytest.approx(2 / 3) and scores["list_recall.companies"] == 0.5
    assert scores["list_f1.companies"] == pytest.approx(4 / 7)
    assert scores["list_precision.people"] == 0.5 and scores["list_recall.people"] == 1.0
    assert scores["list_f1.people"] == pytest.approx(2 / 3)
    assert scores["list_precision"] == scores["list_recall"] == scores["list_f1"] == pytest.approx(0.6)
    assert scores["field_exact.people"] == 0.5 and scores["field_exact.companies"] == 0.0
    assert t.headline == "list_f1" and task("extract", fields=TYPED).headline == "field_exact"


def test_list_items_not_in_the_input_count_as_hallucinated():
    t = task("extract", fields={"name": "姓名", "companies": {"type": "list"}})
    record = Record(id="1", where="f:1", input="李雷投诉了腾讯。", output={"name": "李雷", "companies": ["腾讯"]})
    scores = t.score([Parsed({"name": "李雷", "companies": ["腾讯", "百度"]})], [record])
    assert scores["hallucinated"] == pytest.approx(1 / 3)


def test_choices_get_macro_f1_and_numbers_and_dates_compare_as_values():
    t = task("extract", fields=TYPED)
    golds = [rec({**GOLD, "priority": p}) for p in ("高", "低", "低")]
    parsed = [Parsed({**CANONICAL, "priority": p}) for p in ("高", "高", "低")]
    scores = t.score(parsed, golds)
    assert scores["field_exact.priority"] == pytest.approx(2 / 3)
    assert scores["macro_f1.priority"] == pytest.approx((2 / 3 + 2 / 3 + 0) / 3)  # 高 2/3, 低 2/3, 中 never given
    assert scores["field_exact.amount"] == scores["field_exact.signed"] == 1.0  # 300 is 300; 2025年5月16日 is 2025-05-16
    assert t.score([Parsed({**CANONICAL, "amount": 300.0})], golds[:1])["field_exact.amount"] == 1.0
    assert t.score([Parsed({**CANONICAL, "amount": 301})], golds[:1])["field_exact.amount"] == 0.0


def test_the_teacher_is_asked_for_the_types_and_its_list_items_must_be_in_the_text():
    t = task("extract", fields=TYPED)
    properties = t.teacher_schema()["json_schema"]["schema"]["properties"]
    assert properties["companies"]["type"] == "array" and properties["companies"]["items"] == {"type": "string"}
    assert properties["email"]["type"] == ["string", "null"] and properties["priority"]["enum"] == ["低", "中", "高"]
    assert properties["amount"]["type"] == "number" and properties["urgent"]["type"] == "boolean"
    record = Record(id="1", where="f:1", input="我叫李雷，投诉阿里巴巴和腾讯。", output=None)
    answer = json.dumps({**CANONICAL, "companies": ["阿里巴巴", "百度"]}, ensure_ascii=False)
    refused = t.teacher_answer(answer, record)
    assert not refused.ok and "'companies' = '百度' not found in the text" in refused.error
    assert t.teacher_answer(json.dumps(CANONICAL, ensure_ascii=False), record).value == CANONICAL
