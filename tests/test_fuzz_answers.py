"""Property tests (hypothesis) of the answer parsers and the grammar builders, on arbitrary unicode.

Texts mix random characters with the awkward ones: quotes, backslashes, NUL, newlines, RTL and BOM marks,
line separators, control-token strings, code fences, JSON fragments (and lone surrogates for the parsers,
which read whatever a model or a teacher sends). Neither ever raises anything but the project's own errors;
what a grammar accepts is what it promises (a grounded value is a substring of the text).
"""

from __future__ import annotations

import json

import pytest
import xgrammar as xgr
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from smalltune.config import FieldSpec, TaskConfig
from smalltune.data.records import Record
from smalltune.errors import InputError
from smalltune.inference.constrain import Grammars
from smalltune.tasks import build_task
from smalltune.tasks.grammar import (
    MAX_GROUNDED_CHARS,
    choice_grammar,
    ends_inside_a_word,
    extract_grammar,
    substring_rules,
)

AWKWARD = ['"', "\\", "\x00", "\n", "\r\n", "\t", "\u200f", "\u202e", "\u2028", "\ufeff", "\x7f", "\x85",
           "<|im_end|>", "<|im_start|>system\n", "```json\n", "```", "{", "}", "[", "]", ":", ",", "\\u0000",
           "\\ud800", "'", "“", "”", "。", "姓名", "体育", "🙂"]
FIELDS = {"name": "姓名", 'e"mail\n': "邮箱", "问题\\": "问题"}
LABELS = ["体育", "财经", "<|im_end|>", 'a"b', "行\n二", ""]
TASKS = {
    "extract": build_task(TaskConfig(name="t", kind="extract", fields=FIELDS, data={"train": "x.jsonl"})),
    "classify": build_task(TaskConfig(name="t", kind="classify", labels=LABELS, data={"train": "x.jsonl"})),
    "chat": build_task(TaskConfig(name="t", kind="chat", system="你是客服。", data={"train": "x.jsonl"})),
}
FUZZ = settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
GRAMMAR_FUZZ = settings(FUZZ, max_examples=50)  # each example compiles a grammar


def texts(surrogates: bool, max_pieces: int = 12, awkward: list[str] = AWKWARD) -> st.SearchStrategy[str]:
    """Random text and awkward pieces, joined; with `surrogates`, lone surrogates among the characters."""
    chars = st.characters(exclude_categories=() if surrogates else ("Cs",))
    return st.lists(st.one_of(st.text(chars, max_size=12), st.sampled_from(awkward)), max_size=max_pieces).map("".join)


def json_values() -> st.SearchStrategy:
    leaves = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | texts(surrogates=True, max_pieces=4)
    return st.recursive(leaves, lambda inner: st.lists(inner, max_size=4)
                        | st.dictionaries(st.sampled_from([*FIELDS, "other"]) | texts(False, 2), inner, max_size=4),
                        max_leaves=12)


def answers() -> st.SearchStrategy[str]:
    """What a model or a teacher might answer: any text, or JSON (an object with the fields, say) inside text."""
    as_json = st.tuples(texts(True, 3), json_values(), st.booleans(), texts(True, 3)).map(
        lambda t: t[0] + json.dumps(t[1], ensure_ascii=t[2]) + t[3])
    return texts(surrogates=True) | as_json | st.sampled_from(LABELS)


def check_parsed(kind: str, parsed, answer: str, record: Record) -> None:
    if not parsed.ok:
        assert isinstance(parsed.error, str) and parsed.error and parsed.value is None
    elif kind == "extract":
        assert isinstance(parsed.value, dict)
    elif kind == "classify":
        assert parsed.value in LABELS
    else:
        assert parsed.value == answer.strip()


@pytest.mark.parametrize("kind", TASKS)
@FUZZ
@given(answer=answers(), text=texts(surrogates=True))
@example(answer='{"name": ' + "[" * 5000, text="x")  # nested past the recursion limit
@example(answer='{"name": "\\ud800", "e\\"mail\\n": "", "问题\\\\": ""}', text="\ud800")
def test_answer_parsers_read_any_text_or_say_why_not(kind, answer, text):
    task, record = TASKS[kind], Record("r", "x:1", text, None)
    check_parsed(kind, task.parse(answer, record), answer, record)


@pytest.mark.parametrize("kind", TASKS)
@FUZZ
@given(answer=answers(), text=texts(surrogates=True))
@example(answer='{"name": "张", "e\\"mail\\n": "", "问题\\\\": "x"}', text="张三说x")
def test_teacher_answers_become_checked_training_outputs_or_a_reason(kind, answer, text):
    task, record = TASKS[kind], Record("r", "x:1", text, None)
    result = task.teacher_answer(answer, record)
    check_parsed(kind, result, answer, record)
    if result.ok and kind == "extract":
        assert list(result.value) == list(FIELDS) and all(isinstance(v, str) for v in result.value.values())
        assert all(value in text for value in result.value.values())  # every field is extractive


@pytest.fixture(scope="module")
def grammars(qwen_tokenizer) -> Grammars:
    return Grammars(qwen_tokenizer, 151936, [qwen_tokenizer.convert_tokens_to_ids("<|im_end|>")])


def accepts(grammars: Grammars, ebnf: str, answer: str) -> bool:
    """Whether the compiled grammar takes `answer` whole and then the end of the answer."""
    matcher = xgr.GrammarMatcher(grammars.compiled(ebnf))
    return matcher.accept_string(answer) and matcher.accept_token(matcher.stop_token_ids[0]) and matcher.is_terminated()


def json_inner(text: str) -> str:
    """`text` as `json.dumps(..., ensure_ascii=False)` writes it inside a string (what the answers hold)."""
    return json.dumps(text, ensure_ascii=False)[1:-1]


@GRAMMAR_FUZZ
@given(text=texts(surrogates=False), data=st.data())
@example(text='a"b\\c\x00\n<|im_end|>\u200f', data=None)
def test_the_substring_grammar_takes_every_substring_ending_at_a_word_boundary_and_only_those(grammars, text, data):
    ebnf = "root ::= s0\n" + substring_rules(text, "s")
    if data is None:  # the explicit example: every substring, and a few that are not
        spans = [(i, j) for i in range(len(text)) for j in range(i, len(text) + 1)]
        others = ["x", "\n\n"]
    else:
        i = data.draw(st.integers(0, len(text)))
        j = data.draw(st.integers(i, len(text)))
        spans, others = [(i, j)], [text[i:j] + data.draw(st.sampled_from([*AWKWARD, *text[:8]]))]
    for i, j in spans:
        closable = i == j or any(not ends_inside_a_word(text, k + j - i) for k in range(len(text)) if text.startswith(text[i:j], k))
        assert accepts(grammars, ebnf, json_inner(text[i:j])) == closable, (text, i, j)
    for other in others:
        assert not accepts(grammars, ebnf, json_inner(other)) or other in text


def _word_end(text: str, end: int) -> int:
    """`end`, moved past the rest of the run of letters or digits it would cut."""
    while ends_inside_a_word(text, end):
        end += 1
    return end


@GRAMMAR_FUZZ
@given(text=texts(surrogates=False), data=st.data())
def test_a_grounded_answer_the_grammar_takes_parses_and_copies_from_the_text(grammars, text, data):
    ebnf = extract_grammar({name: FieldSpec() for name in FIELDS}, text)
    spans = [data.draw(st.tuples(st.integers(0, len(text)), st.integers(0, len(text)))) for _ in FIELDS]
    value = {name: text[min(a, b):_word_end(text, max(a, b))] for name, (a, b) in zip(FIELDS, spans)}
    answer = json.dumps(value, ensure_ascii=False)  # what TaskKind.answer writes for training
    assert accepts(grammars, ebnf, answer)
    parsed = TASKS["extract"].parse(answer, Record("r", "x:1", text, None))
    assert parsed.ok and parsed.value == value
    absent = next(chr(code) for code in range(1, 0xD800) if chr(code) not in text)  # so name + absent is not either
    assert not accepts(grammars, ebnf, json.dumps({**value, "name": value["name"] + absent}, ensure_ascii=False))


TYPED = {"items": FieldSpec(type="list"), "n": FieldSpec(type="integer"), "x": FieldSpec(type="number", optional=True),
         "ok": FieldSpec(type="boolean"), "when": FieldSpec(type="date", optional=True),
         "pick": FieldSpec(type="choice", choices=["体育", 'a"b', "行\n二"])}
TYPED_TASK = build_task(TaskConfig(name="t", kind="extract", fields=TYPED, data={"train": "x.jsonl"}))


@GRAMMAR_FUZZ
@given(text=texts(surrogates=False), data=st.data())
def test_a_typed_answer_as_training_writes_it_is_taken_by_its_grammar_and_parses_back(grammars, text, data):
    spans = data.draw(st.lists(st.tuples(st.integers(0, len(text)), st.integers(0, len(text))), max_size=4))
    items = list(dict.fromkeys(filter(None, (text[min(a, b):_word_end(text, max(a, b))] for a, b in spans))))
    value = {"items": items, "n": data.draw(st.integers()),
             "x": data.draw(st.none() | st.integers() | st.floats(allow_nan=False, allow_infinity=False)),
             "ok": data.draw(st.booleans()), "when": data.draw(st.none() | st.dates().map(lambda d: d.isoformat())),
             "pick": data.draw(st.sampled_from(TYPED["pick"].choices))}
    answer = json.dumps(value, ensure_ascii=False)  # what TaskKind.answer writes for training
    assert accepts(grammars, extract_grammar(TYPED, text), answer) and accepts(grammars, extract_grammar(TYPED, None), answer)
    assert TYPED_TASK.parse(answer, Record("r", "x:1", text, None)).value == value
    absent = next(chr(code) for code in range(1, 0xD800) if chr(code) not in text)
    assert not accepts(grammars, extract_grammar(TYPED, text), json.dumps({**value, "items": [absent]}, ensure_ascii=False))


# A label that spells out the end-of-turn token is left out: the grammar lets the model end its turn there, the
# answer is then empty, and parse says it is no label (an error row, not a wrong label).
LABEL_PIECES = [piece for piece in AWKWARD if "<|" not in piece]


@GRAMMAR_FUZZ
@given(labels=st.lists(texts(False, 4, LABEL_PIECES), min_size=1, max_size=6, unique=True), data=st.data())
@example(labels=["行\n二", "a\x00b", 'q"', ""], data=None)
def test_the_choice_grammar_compiles_for_any_labels_and_takes_exactly_them(grammars, labels, data):
    ebnf = choice_grammar(labels)
    assert all(accepts(grammars, ebnf, label) for label in labels)
    other = "\x01" + labels[0] if data is None else data.draw(texts(False, 4, LABEL_PIECES))
    assert not accepts(grammars, ebnf, other) or other in labels


def test_grammar_builders_refuse_what_they_cannot_build_with_the_projects_error():
    with pytest.raises(InputError, match="no labels"):
        choice_grammar([])
    with pytest.raises(InputError, match="infer.grounded: false"):
        extract_grammar({"name": FieldSpec()}, "长" * (MAX_GROUNDED_CHARS + 1))
