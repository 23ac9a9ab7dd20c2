"""Append-only outputs: resumed only when smalltune wrote them (a torn last line of ours cut), others untouched."""

from __future__ import annotations

import json

import pytest

from smalltune.errors import OutputError
from smalltune.io import read_appended, refuse_overwriting

KEYS = ("id", "answer")
ROWS = [{"id": "a", "answer": "x"}, {"id": "b", "answer": "y"}]


def lines(rows: list[dict]) -> bytes:
    return "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows).encode("utf-8")


@pytest.mark.parametrize("torn", [b'{"id": "c", "ans', b'{"id": "c", "answer": "z"}', b'{"id": "c", "answer": "\xe5'])
def test_a_torn_last_line_of_our_output_is_cut_and_the_rows_before_it_kept(tmp_path, torn):
    path = tmp_path / "out.jsonl"
    path.write_bytes(lines(ROWS) + torn)
    assert read_appended(path, KEYS) == ROWS
    assert path.read_bytes() == lines(ROWS)


def test_a_missing_or_empty_file_is_a_new_output(tmp_path):
    assert read_appended(tmp_path / "new.jsonl", KEYS) == []
    (tmp_path / "empty.jsonl").write_bytes(b"")
    assert read_appended(tmp_path / "empty.jsonl", KEYS) == []


@pytest.mark.parametrize(("content", "line"), [
    (lines([{"id": "a", "input": "a training record"}]), 1),                 # another kind of JSON Lines
    (lines(ROWS) + lines([{"id": "c", "input": "x"}]), 3),                  # ours, then a row that is not
    (b'{"id": "a", "input": "one record, no final newline"}', 1),          # whole JSON, not our row: never cut
    (b'[{"id": "a", "answer": "x"},\n {"id": "b", "answer": "y"}]', 1),    # a JSON array
    ("张三,13800000000\n李四".encode("gbk"), 1),                              # not even UTF-8
    (lines(ROWS) + b"# a note", 3),                                         # a last line that is not ours
])
def test_a_file_smalltune_did_not_write_is_refused_and_left_as_it_is(tmp_path, content, line):
    path = tmp_path / "theirs.jsonl"
    path.write_bytes(content)
    with pytest.raises(OutputError, match=rf"theirs\.jsonl:{line}: not a row of this command's output"):
        read_appended(path, KEYS)
    assert path.read_bytes() == content


def test_a_folder_is_not_an_output_file(tmp_path):
    with pytest.raises(OutputError, match="not a file"):
        read_appended(tmp_path, KEYS)


def test_an_output_equal_to_an_input_however_spelled_is_refused(tmp_path, monkeypatch):
    source = tmp_path / "in.jsonl"
    source.write_text("{}\n")
    (tmp_path / "link.jsonl").symlink_to(source)
    monkeypatch.chdir(tmp_path)
    for out in ("in.jsonl", tmp_path / "sub" / ".." / "in.jsonl", "link.jsonl"):
        with pytest.raises(OutputError, match="would overwrite the input"):
            refuse_overwriting([out], [source])
    refuse_overwriting([tmp_path / "out.jsonl"], [source])
