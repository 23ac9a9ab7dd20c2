"""Constrained decoding: even a random-weight model can only answer in the task's valid form."""

from __future__ import annotations

import json

import pytest
import xgrammar as xgr
from transformers import AutoModelForCausalLM

from smalltune.config import FieldSpec, TaskConfig
from smalltune.tasks import grammar
from smalltune.tasks.grammar import extract_grammar, substring_automaton
from smalltune.data.records import Record
from smalltune.inference.transformers_engine import TransformersEngine as Engine
from smalltune.recipes.synth.complaints import FIELDS, generate_complaints
from smalltune.tasks import build_task

TEXT = '【署名：赵娜】所在地址 四川省婷市兴山李路Z座；电邮："yong\\kong"@yahoo.com\n电梯年检合格证已经过期了。'


def _walk(automaton, text: str) -> bool:
    state = 0
    for char in text:
        if char not in automaton.transitions[state]:
            return False
        state = automaton.transitions[state][char]
    return True


def test_substring_automaton_accepts_exactly_the_substrings():
    automaton = substring_automaton(TEXT)
    substrings = {TEXT[i:j] for i in range(len(TEXT)) for j in range(i, len(TEXT) + 1)}
    assert all(_walk(automaton, s) for s in substrings)
    assert not _walk(automaton, "四川省省婷市")  # a copy slip the unconstrained model made
    assert not _walk(automaton, "赵娜娜")
    assert len(automaton.transitions) <= 2 * len(TEXT)


@pytest.fixture(scope="module")
def compiler(qwen_tokenizer):
    info = xgr.TokenizerInfo.from_huggingface(qwen_tokenizer, vocab_size=151936, stop_token_ids=[151645])
    return xgr.GrammarCompiler(info)


def _accepts(compiler, ebnf: str, tokenizer, answer: str) -> bool:
    matcher = xgr.GrammarMatcher(compiler.compile_grammar(ebnf))
    ids = tokenizer(answer, add_special_tokens=False)["input_ids"] + [151645]
    return all(matcher.accept_token(i) for i in ids) and matcher.is_terminated()


def test_grounded_grammar_takes_the_canonical_answer_and_refuses_invented_text(compiler, qwen_tokenizer):
    fields = {name: FieldSpec() for name in FIELDS}
    good = {"name": "赵娜", "address": "四川省婷市兴山李路Z座", "email": '"yong\\kong"@yahoo.com', "question": "电梯年检合格证已经过期了"}
    grammar = extract_grammar(fields, TEXT)
    assert _accepts(compiler, grammar, qwen_tokenizer, json.dumps(good, ensure_ascii=False))
    assert not _accepts(compiler, grammar, qwen_tokenizer, json.dumps({**good, "address": "四川省省婷市"}, ensure_ascii=False))
    reordered = {k: good[k] for k in reversed(good)}
    assert not _accepts(compiler, grammar, qwen_tokenizer, json.dumps(reordered, ensure_ascii=False))
    free = extract_grammar({**fields, "question": FieldSpec(extractive=False)}, TEXT)  # a field that is not copied from the text
    assert _accepts(compiler, free, qwen_tokenizer, json.dumps({**good, "question": "电梯证过期"}, ensure_ascii=False))


SITU = "投诉人 司徒静 | 地址 广东省广州市天河区珠江新城花城大道85号 | 邮箱 situ.jing@qq.com | 内容 健身房突然关门跑路。"


def _allowed_next(compiler, tokenizer, ebnf: str, prefix_ids: list[int]) -> set[str]:
    matcher = xgr.GrammarMatcher(compiler.compile_grammar(ebnf))
    assert all(matcher.accept_token(i) for i in prefix_ids)
    mask = xgr.allocate_token_bitmask(1, 151936)
    matcher.fill_next_token_bitmask(mask)
    bits = mask[0]
    return {tokenizer.decode([t]) for t in range(len(tokenizer)) if (int(bits[t // 32]) >> (t % 32)) & 1}


def test_a_grounded_value_cannot_close_inside_a_word_after_an_uncanonical_token(compiler, qwen_tokenizer):
    """The `sit` answer: the email's canonical tokens are `s` + `itu`; a model that writes the single token `sit`
    could only go on with `u`, and closed the string instead. A value now never ends inside a run of letters or
    digits, so after `sit` the string must go on; at a boundary (after `situ.jing`, before `@`) it may close."""
    ebnf = extract_grammar({name: FieldSpec() for name in FIELDS}, SITU)
    prefix = json.dumps({"name": "司徒静", "address": "广东省广州市天河区珠江新城花城大道85号"}, ensure_ascii=False)[:-1]
    prefix_ids = qwen_tokenizer(prefix + ', "email": "', add_special_tokens=False)["input_ids"]
    assert qwen_tokenizer.convert_ids_to_tokens(prefix_ids[-1:]) == ['Ġ"']
    sit = qwen_tokenizer.convert_tokens_to_ids("sit")
    after_sit = _allowed_next(compiler, qwen_tokenizer, ebnf, prefix_ids + [sit])
    assert "u" in after_sit and not {'"', '",'} & after_sit
    at_boundary = _allowed_next(compiler, qwen_tokenizer, ebnf, prefix_ids + qwen_tokenizer("situ.jing", add_special_tokens=False)["input_ids"])
    assert {'"', "@"} <= at_boundary
    right = {"name": "司徒静", "address": "广东省广州市天河区珠江新城花城大道85号", "email": "situ.jing@qq.com", "question": "健身房突然关门跑路。"}
    assert _accepts(compiler, ebnf, qwen_tokenizer, json.dumps(right, ensure_ascii=False))
    assert not _accepts(compiler, ebnf, qwen_tokenizer, json.dumps({**right, "email": "sit"}, ensure_ascii=False))
    assert _accepts(compiler, ebnf, qwen_tokenizer, json.dumps({**right, "address": "广东省广州市"}, ensure_ascii=False))


def _config(tmp_path, model_dir, **settings) -> TaskConfig:
    return TaskConfig(
        name="c", fields=FIELDS, data={"train": tmp_path / "unused.jsonl"},
        model={"name": str(model_dir), "dtype": "float32", "max_length": 256},
        infer={"batch_size": 4, "max_new_tokens": 200}, **settings,
    )


def test_random_model_gives_valid_grounded_json_when_constrained(tmp_path, tiny_qwen3_dir, qwen3_tokenizer):
    config = _config(tmp_path, tiny_qwen3_dir, kind="extract")
    engine = Engine(AutoModelForCausalLM.from_pretrained(tiny_qwen3_dir), qwen3_tokenizer, config)
    _, test_rows = generate_complaints(n_train=1, n_test=6, seed=5)
    records = [Record(r["id"], "t", r["input"], r["output"]) for r in test_rows]
    texts = engine.generate(records).texts
    for text, record in zip(texts, records):
        parsed = engine.task.parse(text, record)
        assert parsed.ok, text
        assert list(parsed.value) == list(FIELDS)
        assert all(value in record.input for value in parsed.value.values())


def test_random_model_answers_one_of_the_candidates_when_constrained(tmp_path, tiny_qwen3_dir, qwen3_tokenizer):
    config = _config(tmp_path, tiny_qwen3_dir, kind="classify", labels=["体育", "财经", "科技"])
    config = config.model_copy(update={"infer": config.infer.model_copy(update={"classify": "generate"})})
    engine = Engine(AutoModelForCausalLM.from_pretrained(tiny_qwen3_dir), qwen3_tokenizer, config)
    records = [Record("a", "t", "中超联赛第十轮战报", "体育"), Record("b", "t", "央行宣布降准", "财经", candidates=["财经", "娱乐"])]
    texts = engine.generate(records).texts
    assert texts[0] in {"体育", "财经", "科技"}
    assert texts[1] in {"财经", "娱乐"}
    assert all(build_task(config).parse(t, r).ok for t, r in zip(texts, records))


class GroundingRecorder(Engine):
    """The transformers engine, keeping the input each grammar was built from and each prompt it answered."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.grounded_on: list[str] = []
        self.prompts: list[list[int]] = []

    def grammar(self, record):
        self.grounded_on.append(record.input)
        return super().grammar(record)

    def _answer(self, prompts, grammars, on_batch):
        self.prompts += prompts
        return super()._answer(prompts, grammars, on_batch)


def test_the_grounding_grammar_is_built_from_the_input_as_the_model_was_shown_it(tmp_path, tiny_qwen3_dir,
                                                                                 qwen3_tokenizer):
    config = _config(tmp_path, tiny_qwen3_dir, kind="extract")
    engine = GroundingRecorder(AutoModelForCausalLM.from_pretrained(tiny_qwen3_dir), qwen3_tokenizer, config)
    text = TEXT + "无关的页脚文字。" * 300 + "只在末尾出现的地址：火星市"
    generation = engine.generate([Record("long", "t:1", text, None)])
    assert generation.truncated == [True]
    (shown,) = engine.grounded_on
    assert text.startswith(shown) and len(shown) < len(text) // 4 and "火星市" not in shown
    assert shown in qwen3_tokenizer.decode(engine.prompts[0])  # exactly the text the model saw


def test_a_record_that_cannot_be_shown_or_grounded_gets_its_problem_and_the_others_their_answers(
        tmp_path, tiny_qwen3_dir, qwen3_tokenizer, monkeypatch):
    monkeypatch.setattr(grammar, "MAX_GROUNDED_CHARS", 60)  # a cap the test's inputs can cross
    config = _config(tmp_path, tiny_qwen3_dir, kind="extract")
    engine = Engine(AutoModelForCausalLM.from_pretrained(tiny_qwen3_dir), qwen3_tokenizer, config)
    records = [Record("short", "in.jsonl:1", "我叫赵娜，电梯坏了。", None),
               Record("long", "in.jsonl:2", TEXT + TEXT, None),
               Record("wordy", "in.jsonl:3", "短", None, instruction="很长的说明。" * 200)]
    generation = engine.generate(records)
    fine, long, wordy = generation.problems
    assert fine is None and engine.task.parse(generation.texts[0], records[0]).ok
    assert long.startswith("in.jsonl:2: ") and "more than the 60" in long and "infer.grounded: false" in long
    assert wordy.startswith("in.jsonl:3: ") and "raise model.max_length" in wordy
    assert generation.texts[1:] == ["", ""]


TYPED = {"name": "姓名", "email": {"description": "邮箱", "optional": True}, "companies": {"type": "list"},
         "priority": {"type": "choice", "choices": ["低", "中", "高"]}, "amount": {"type": "number"},
         "count": {"type": "integer"}, "signed": {"type": "date"}, "urgent": {"type": "boolean"}}
COMPLAINT = "我叫李雷，邮箱 lilei@qq.com，投诉阿里巴巴和腾讯：两家都没退款。"
ANSWER = {"name": "李雷", "email": None, "companies": ["阿里巴巴", "腾讯"], "priority": "高", "amount": 300.5,
          "count": 2, "signed": "2025-05-16", "urgent": True}


def _typed_task(tmp_path):
    return build_task(TaskConfig(name="t", kind="extract", fields=TYPED, data={"train": tmp_path / "x.jsonl"}))


@pytest.mark.parametrize(("field", "wrong"), [
    ("name", None), ("email", ""), ("email", 3), ("companies", "阿里巴巴"), ("companies", [1]),
    ("priority", "很高"), ("priority", None), ("amount", "300"), ("amount", True), ("count", 2.5),
    ("signed", "2025-5-16"), ("signed", "2025-13-01"), ("urgent", "true"), ("urgent", None),
])
def test_each_type_takes_the_canonical_answer_and_refuses_a_wrong_typed_value(compiler, qwen_tokenizer, tmp_path,
                                                                             field, wrong):
    task = _typed_task(tmp_path)
    record = Record("r", "t:1", COMPLAINT, ANSWER)
    for grounded in (True, False):
        ebnf = task.grammar(record, grounded)
        assert _accepts(compiler, ebnf, qwen_tokenizer, task.answer(record))
        assert not _accepts(compiler, ebnf, qwen_tokenizer, json.dumps({**ANSWER, field: wrong}, ensure_ascii=False))


@pytest.mark.parametrize(("field", "value", "grounded_too"), [
    ("email", "lilei@qq.com", True), ("companies", [], True), ("companies", ["腾讯"], True),
    ("companies", ["百度"], False), ("companies", ["阿里巴巴", "阿里"], True), ("name", "", True),
    ("name", "王五", False), ("amount", -1e-05, True), ("amount", 12, True), ("count", -7, True), ("urgent", False, True),
])
def test_grounded_values_and_list_items_come_from_the_text_and_other_values_of_the_type_pass(
        compiler, qwen_tokenizer, tmp_path, field, value, grounded_too):
    task = _typed_task(tmp_path)
    record = Record("r", "t:1", COMPLAINT, None)
    answer = json.dumps({**ANSWER, field: value}, ensure_ascii=False)
    assert _accepts(compiler, task.grammar(record, False), qwen_tokenizer, answer)
    assert _accepts(compiler, task.grammar(record, True), qwen_tokenizer, answer) == grounded_too


def test_a_typed_grammar_shares_one_set_of_substring_rules_among_its_grounded_fields(tmp_path):
    ebnf = _typed_task(tmp_path).grammar(Record("r", "t:1", COMPLAINT, None), True)
    assert ebnf.count("\ns0 ::= ") == 1 and ebnf.count("\nsn ::= ") == 1


def test_a_lines_field_names_only_lines_of_the_input_in_ascending_ranges(compiler, qwen_tokenizer, tmp_path):
    task = build_task(TaskConfig(name="t", kind="extract", data={"train": tmp_path / "x.jsonl"},
                                 fields={"title": "标题", "content": {"type": "lines"}}))
    page = Record("p", "t:1", "\n\n".join(f"第{n}行文字" for n in range(1, 13)), None)  # 12 lines, blank ones between
    ebnf = task.grammar(page, True)
    for refs in ("[]", "[[1, 12]]", "[[3, 5], [8, 8]]", "[[1, 1], [3, 3], [5, 9], [11, 12]]", "[[10, 11]]"):
        assert _accepts(compiler, ebnf, qwen_tokenizer, f'{{"title": "第3行文字", "content": {refs}}}'), refs
    for refs in ("[[0, 3]]", "[[3, 13]]", "[[13, 13]]", "[[5, 4]]", "[[12, 1]]", "[[3, 5], [8]]", "[[03, 5]]",
                 "[[3,5]]", '"第3行文字"', "[[10, 11], [2, 2]]", "[[9, 9], [9, 9]]", "[[3, 5], [6, 8]]", "[[]]"):
        assert not _accepts(compiler, ebnf, qwen_tokenizer, f'{{"title": "第3行文字", "content": {refs}}}'), refs
    assert not _accepts(compiler, ebnf, qwen_tokenizer, '{"title": "第13行文字", "content": []}')  # grounded still
    empty = task.grammar(Record("e", "t:2", "", None), True)
    assert _accepts(compiler, empty, qwen_tokenizer, '{"title": "", "content": []}')
    assert not _accepts(compiler, empty, qwen_tokenizer, '{"title": "", "content": [[1, 1]]}')


@pytest.mark.parametrize("grounded", [True, False])
def test_a_list_with_max_items_closes_there_so_a_repeated_item_cannot_run_past_the_budget(compiler, qwen_tokenizer,
                                                                                         grounded):
    """The entities model once wrote one team name 30 times until its 128 tokens ran out (invalid JSON): with
    max_items the grammar allows at most that many items."""
    text = "维拉也占据绝对上风。不过专家组考虑到富勒姆近期出色的状态"
    ebnf = extract_grammar({"organization": FieldSpec(type="list", max_items=3)}, text if grounded else None)
    answer = lambda n: json.dumps({"organization": ["维拉"] * n}, ensure_ascii=False)  # noqa: E731
    assert all(_accepts(compiler, ebnf, qwen_tokenizer, answer(n)) for n in (0, 1, 3))
    assert not _accepts(compiler, ebnf, qwen_tokenizer, answer(4))
    single = extract_grammar({"organization": FieldSpec(type="list", max_items=1)}, text if grounded else None)
    assert _accepts(compiler, single, qwen_tokenizer, json.dumps({"organization": ["富勒姆"]}, ensure_ascii=False))
    assert not _accepts(compiler, single, qwen_tokenizer, answer(2))
