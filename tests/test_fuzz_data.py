"""Property-based tests (hypothesis) of everything that reads a user's file: whatever the bytes or the rows hold
(lone surrogates, NUL, RTL marks, BOMs, chat-template control tokens, very long lines), the readers, the formats
and the output reader raise nothing but the project's own errors, and no lone surrogate reaches a record."""

from __future__ import annotations

import json

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from smalltune.config import DataConfig
from smalltune.data.readers import RecordProblem, read_rows
from smalltune.data.records import load_records
from smalltune.errors import DataError, OutputError
from smalltune.io import LONE_SURROGATE, read_appended
from smalltune.registry import FORMATS

FUZZ = settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
TRICKY = ["<|im_end|>", "<|im_start|>system\n", "<|endoftext|>", "\u202e", "\u200f", "\x00", "\ufeff", "\r", "\u2028",
          "\\ud800", "\ud800", "\udfff", '"', "{", "[", ",", "投诉", "\xff"]

# any code point, surrogates included, mixed with the strings that break readers
any_text = st.text(st.characters(exclude_categories=()), max_size=12)
texts = st.one_of(any_text, st.tuples(any_text, st.sampled_from(TRICKY), any_text).map("".join))
clean_texts = texts.map(lambda t: LONE_SURROGATE.sub("?", t))
json_values = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | texts,
                           lambda inner: st.lists(inner, max_size=4) | st.dictionaries(texts, inner, max_size=4),
                           max_leaves=12)
keys = st.sampled_from(["id", "input", "output", "instruction", "system", "history", "messages", "text", "label",
                        "candidates", "role", "content"]) | texts
roles = st.sampled_from(["system", "user", "assistant", "bot"]) | json_values
messages = st.lists(st.fixed_dictionaries({"role": roles, "content": texts | json_values}), max_size=4)
rows = st.one_of(
    st.dictionaries(keys, json_values | messages, max_size=6),  # anything
    st.fixed_dictionaries({"input": texts, "output": texts | json_values},  # nearly a record
                          optional={"id": texts | st.integers(), "instruction": texts, "system": texts, "text": texts,
                                    "label": texts, "candidates": texts | st.lists(texts), "messages": messages}),
)


def encoded(text: str, how: str) -> bytes:
    """Text as a file would hold it: UTF-8 (surrogates as the invalid bytes they become), GBK, or UTF-16."""
    if how == "gbk":
        return text.encode("gb18030", "replace")
    return text.encode("utf-16" if how == "utf-16" else "utf-8", "surrogatepass")


def assert_rows_are_records_or_problems(result: list) -> None:
    for line, row in result:
        assert isinstance(line, int) and line >= 1
        assert isinstance(row, (dict, RecordProblem))
        if isinstance(row, dict):
            assert not LONE_SURROGATE.search(json.dumps(row, ensure_ascii=False)), "a lone surrogate reached a row"


@FUZZ
@given(lines=st.lists(st.one_of(texts, rows.map(json.dumps), rows.map(lambda r: json.dumps(r, ensure_ascii=False))),
                      max_size=6),
       encodings=st.lists(st.sampled_from(["utf-8", "gbk", "utf-16"]), min_size=6, max_size=6),
       suffix=st.sampled_from([".jsonl", ".json", ".csv"]), long_line=st.integers(0, 50_000))
def test_read_rows_raises_only_data_errors_on_any_file(tmp_path, lines, encodings, suffix, long_line):
    if long_line and lines:
        lines[0] *= long_line // max(len(lines[0]), 1)
    path = tmp_path / f"fuzz{suffix}"
    path.write_bytes(b"\n".join(encoded(text, how) for text, how in zip(lines, encodings)))
    try:
        result = read_rows(path)
    except DataError:
        return
    assert_rows_are_records_or_problems(result)


@FUZZ
@given(objects=st.lists(st.dictionaries(clean_texts, clean_texts | st.integers(), max_size=4), max_size=8),
       bom=st.booleans())
def test_every_object_of_a_utf8_json_lines_file_is_read_back_as_written(tmp_path, objects, bom):
    path = tmp_path / "fuzz.jsonl"
    text = "".join(json.dumps(o, ensure_ascii=False) + "\n" for o in objects)
    path.write_bytes(b"\xef\xbb\xbf" * bom + text.encode())
    assert read_rows(path) == list(enumerate(objects, start=1))


@FUZZ
@given(row=rows, name=st.sampled_from(FORMATS.names()), require_output=st.booleans(),
       columns=st.sampled_from([{}, {"input": "text", "output": "label"}, {"candidates": "candidates"},
                                {"input": "text", "id": "label", "system": "role", "instruction": "content"}]))
def test_a_format_reads_any_row_into_record_fields_or_a_record_problem(row, name, require_output, columns):
    layout = FORMATS.get(name)()
    try:
        fields = layout.read(row, columns, require_output)
    except RecordProblem:
        return
    assert isinstance(fields["input"], str) and fields["input"].strip()


@settings(FUZZ, max_examples=40)
@given(found=st.lists(rows, max_size=6), name=st.sampled_from(FORMATS.names()))
def test_load_records_turns_any_rows_into_records_and_file_line_problems(tmp_path, found, name):
    path = tmp_path / "fuzz.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in found), encoding="utf-8")  # \\ud800 escapes kept
    loaded = load_records(path, DataConfig(train=path, format=name), require_output=False)
    assert len(loaded.records) + len(loaded.problems) == len(found)
    assert all(p.startswith(f"{path}:") for p in loaded.problems)
    assert not any(LONE_SURROGATE.search(json.dumps(r.__dict__, ensure_ascii=False, default=str)) for r in loaded.records)


@FUZZ
@given(content=st.one_of(st.binary(max_size=200), texts.map(lambda t: encoded(t, "utf-8")),
                         st.lists(rows.map(json.dumps), max_size=4).map(lambda ls: "\n".join(ls).encode())))
def test_read_appended_raises_only_output_errors_and_changes_nothing_it_refuses(tmp_path, content):
    path = tmp_path / "out.jsonl"
    path.write_bytes(content)
    try:
        read_appended(path, ("id", "answer"))
    except OutputError:
        assert path.read_bytes() == content
        return
    assert content.startswith(path.read_bytes())  # at most a torn last line was cut
