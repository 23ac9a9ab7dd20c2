"""Tests for smalltune.data: formats, encodings, line numbers, problems, splits, duplicates."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from smalltune.config import DataConfig
from smalltune.data.readers import read_rows
from smalltune.data.records import Record, find_duplicates, load_inputs, load_records, load_splits
from smalltune.errors import DataError

TNEWS = Path("/work/shared/data/tnews/tnews_dev_few_all.json")
HUANHUAN = Path("/work/shared/data/huanhuan/huanhuan.json")
ROWS = [{"instruction": "抽取人名", "input": "张三在北京", "output": "张三"},
        {"instruction": "抽取地名", "input": "李四去上海", "output": "上海"}]


def write_jsonl(path: Path, rows: list, encoding: str = "utf-8") -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding=encoding)
    return path


def write_csv(path: Path, rows: list[dict], encoding: str = "utf-8") -> Path:
    with path.open("w", encoding=encoding, newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path


def config(train: Path, **kwargs) -> DataConfig:
    return DataConfig(train=train, **kwargs)


# --- formats ------------------------------------------------------------------------------------


def test_alpaca_with_system_history_and_empty_input(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "a.jsonl", [
        {"instruction": "Extract the name.", "input": "Alice met Bob.", "output": "Alice", "system": "Be brief.", "id": "x1"},
        {"instruction": "娘娘。", "input": "", "output": "你放心。", "history": [["你好", "好"]]},
        {"instruction": "", "input": "Just input", "output": {"name": "Bob"}},
    ])
    loaded = load_records(path, config(path))
    assert loaded.problems == []
    first, second, third = loaded.records
    assert first == Record(id="x1", where=f"{path}:1", input="Alice met Bob.", output="Alice",
                           instruction="Extract the name.", system="Be brief.")
    assert (second.input, second.instruction, second.id) == ("娘娘。", None, "a-2")
    assert second.history == ({"role": "user", "content": "你好"}, {"role": "assistant", "content": "好"})
    assert (third.input, third.instruction, third.output) == ("Just input", None, {"name": "Bob"})


def test_messages_with_system_and_history(tmp_path: Path) -> None:
    messages = [{"role": "system", "content": "S"}, {"role": "user", "content": "u1"},
                {"role": "assistant", "content": "a1"}, {"role": "user", "content": "u2"},
                {"role": "assistant", "content": "a2"}]
    path = write_jsonl(tmp_path / "m.jsonl", [{"messages": messages}, {"messages": messages[1:3]}])
    records = load_records(path, config(path, format="messages")).records
    assert (records[0].system, records[0].input, records[0].output) == ("S", "u2", "a2")
    assert records[0].history == tuple(messages[1:3])
    assert (records[1].system, records[1].input, records[1].output, records[1].history) == (None, "u1", "a1", ())


def test_messages_without_answer_when_output_not_required(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "m.jsonl", [{"messages": [{"role": "user", "content": "q"}]}])
    data = config(path, format="messages")
    assert load_records(path, data, require_output=False).records[0].output is None
    assert "must end with an assistant message" in load_records(path, data).problems[0]


def test_columns_with_list_and_string_candidates(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "fudan.jsonl", [
        {"text": "比赛结束", "category": ["体育", "财经"], "output": "体育"},
        {"text": "股市上涨", "category": "体育， 财经、科技|军事;教育", "output": "财经"},
    ])
    data = config(path, format="columns", columns={"input": "text", "candidates": "category", "output": "output"})
    loaded = load_records(path, data)
    assert loaded.problems == []
    assert loaded.records[0].candidates == ("体育", "财经")
    assert loaded.records[1].candidates == ("体育", "财经", "科技", "军事", "教育")
    assert (loaded.records[1].input, loaded.records[1].output) == ("股市上涨", "财经")


def test_columns_default_to_input_output_and_id(tmp_path: Path) -> None:
    path = write_csv(tmp_path / "c.csv", [{"id": "7", "input": "hello", "output": "greeting"}])
    record = load_records(path, config(path, format="columns")).records[0]
    assert (record.id, record.input, record.output, record.where) == ("7", "hello", "greeting", f"{path}:2")


def test_outputs_optional_for_prediction_and_json_text_kept(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "p.jsonl", [{"input": "a"}, {"input": "b", "output": '{"k": 1}'}])
    records = load_records(path, config(path), require_output=False).records
    assert [r.output for r in records] == [None, '{"k": 1}']


def test_parquet(tmp_path: Path) -> None:
    pq = pytest.importorskip("pyarrow.parquet")
    import pyarrow as pa

    path = tmp_path / "d.parquet"
    pq.write_table(pa.Table.from_pylist(ROWS), path)
    records = load_records(path, config(path)).records
    assert [(r.where, r.input) for r in records] == [(f"{path}:1", "张三在北京"), (f"{path}:2", "李四去上海")]


# --- encodings and line numbers -----------------------------------------------------------------


@pytest.mark.parametrize("encoding", ["utf-8", "utf-8-sig", "gbk"])
@pytest.mark.parametrize("suffix", [".json", ".jsonl", ".csv"])
def test_encodings(tmp_path: Path, encoding: str, suffix: str) -> None:
    path = tmp_path / f"d{suffix}"
    if suffix == ".json":
        path.write_text(json.dumps(ROWS, ensure_ascii=False, indent=2), encoding=encoding)
    elif suffix == ".jsonl":
        write_jsonl(path, ROWS, encoding)
    else:
        write_csv(path, ROWS, encoding)
    loaded = load_records(path, config(path))
    assert loaded.problems == []
    assert [(r.instruction, r.input, r.output) for r in loaded.records] == [tuple(r.values()) for r in ROWS]


def test_other_encoding_is_rejected(tmp_path: Path) -> None:
    path = tmp_path / "d.jsonl"
    path.write_bytes(json.dumps(ROWS[0], ensure_ascii=False).encode("utf-16"))
    with pytest.raises(DataError, match="not UTF-8 or GBK"):
        read_rows(path)


LINES = [{"id": i, "input": text, "output": "x"} for i, text in enumerate(["我叫李明", "张三在北京", "李四去上海"], 1)]


def lines_with(middle: bytes) -> bytes:
    """Three UTF-8 JSON lines whose second one is replaced by `middle`."""
    lines = [json.dumps(row, ensure_ascii=False).encode("utf-8") for row in LINES]
    return b"\n".join([lines[0], middle, lines[2]]) + b"\n"


@pytest.mark.parametrize("middle", [
    json.dumps(LINES[1], ensure_ascii=False).encode("utf-8").replace("北".encode(), b"\xff"),  # one stray byte
    json.dumps(LINES[1], ensure_ascii=False).encode("gbk"),  # one GBK line
], ids=["stray-byte", "gbk-line"])
def test_a_line_that_is_not_utf8_in_a_utf8_file_is_reported_and_the_rest_read_as_utf8(tmp_path: Path, middle) -> None:
    path = tmp_path / "d.jsonl"
    path.write_bytes(lines_with(middle))
    loaded = load_records(path, config(path))
    assert [r.input for r in loaded.records] == ["我叫李明", "李四去上海"]  # not re-decoded as GB18030 (鎴戝彨鏉庢槑)
    [problem] = loaded.problems
    assert problem.startswith(f"{path}:2: not UTF-8 text (byte 0x")


def test_a_csv_row_that_is_not_utf8_is_a_record_problem(tmp_path: Path) -> None:
    path = tmp_path / "d.csv"
    path.write_bytes("id,input,output\n1,我叫李明,x\n".encode() + "2,张三,x\n".encode("gbk") + "3,李四,x\n".encode())
    loaded = load_records(path, config(path, format="columns"))
    assert [r.input for r in loaded.records] == ["我叫李明", "李四"]
    assert [p.split(" (")[0] for p in loaded.problems] == [f"{path}:3: not UTF-8 text"]


def test_a_json_array_with_a_line_that_is_not_utf8_names_the_line(tmp_path: Path) -> None:
    path = tmp_path / "d.json"
    gbk_line = json.dumps(LINES[1], ensure_ascii=False).encode("gbk")
    path.write_bytes(b"[\n" + lines_with(gbk_line).replace(b"}\n", b"},\n", 2) + b"]\n")
    with pytest.raises(DataError, match=r"d\.json:3: not UTF-8 text"):
        read_rows(path)


@pytest.mark.parametrize("suffix", [".jsonl", ".json"])
def test_a_lone_surrogate_is_a_record_problem_naming_the_field(tmp_path: Path, suffix: str) -> None:
    rows = ['{"input": "ok", "output": "a"}', '{"input": "bad \\ud800 half", "output": "b"}',
            '{"input": "pair \\ud83d\\ude00 ok", "output": "c"}', '{"input": "x", "output": {"f": ["\\udfff"]}}']
    path = tmp_path / f"d{suffix}"
    path.write_text("[\n" + ",\n".join(rows) + "\n]\n" if suffix == ".json" else "\n".join(rows) + "\n")
    loaded = load_records(path, config(path))
    assert [r.input for r in loaded.records] == ["ok", "pair 😀 ok"]
    line = 1 if suffix == ".jsonl" else 2
    assert loaded.problems[0].startswith(f"{path}:{line + 1}: 'input' holds a lone surrogate")
    assert loaded.problems[1].startswith(f"{path}:{line + 3}: 'output'['f'][0] holds a lone surrogate")


def test_json_array_line_numbers(tmp_path: Path) -> None:
    path = tmp_path / "d.json"
    path.write_text('[\n  {"input": "a",\n   "output": "b"},\n\n  {\n "input": "x\\ny", "output": "z"\n  }, {"input": "c", "output": "d"}]\n')
    assert [line for line, _ in read_rows(path)] == [2, 5, 7]
    assert [r.where for r in load_records(path, config(path)).records] == [f"{path}:2", f"{path}:5", f"{path}:7"]


def test_csv_line_numbers_count_physical_lines(tmp_path: Path) -> None:
    path = tmp_path / "d.csv"
    path.write_text('input,output\n"two\nlines",a\n\nb,c\n', encoding="utf-8")
    assert read_rows(path) == [(2, {"input": "two\nlines", "output": "a"}), (5, {"input": "b", "output": "c"})]


def test_json_suffix_holding_json_lines(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "tnews_like.json", [{"sentence": "s1", "label_desc": "news_tech", "id": 1},
                                                      {"sentence": "s2", "label_desc": "news_game", "id": 2}])
    records = load_records(path, config(path, format="columns", columns={"input": "sentence", "output": "label_desc"})).records
    assert [(r.id, r.input, r.output) for r in records] == [("1", "s1", "news_tech"), ("2", "s2", "news_game")]


# --- file errors --------------------------------------------------------------------------------


@pytest.mark.parametrize(("text", "line"), [
    ('[\n {"input": "a", "output": "b"},\n {"input": "a" "output": "b"}\n]', 3),
    ('[\n {"input": "a", "output": "b"}\n {"input": "c"}]', 3),
    ('[\n {"input": "a", "output": "b"},\n]', 3),
])
def test_malformed_json_array(tmp_path: Path, text: str, line: int) -> None:
    path = tmp_path / "bad.json"
    path.write_text(text)
    with pytest.raises(DataError, match=rf"bad\.json:{line}: not valid JSON"):
        read_rows(path)


def test_every_unreadable_json_line_is_reported_and_the_lines_after_it_are_read(tmp_path: Path) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text('{"input": "a", "output": "b"}\n\n{"input": oops}\n[1, 2]\n{"input": "c"}\n'
                    '{"input": "d", "output": "e"}\n')
    loaded = load_records(path, config(path))
    assert [r.input for r in loaded.records] == ["a", "d"]
    assert [p.split(": ", 1)[0] for p in loaded.problems] == [f"{path}:3", f"{path}:4", f"{path}:5"]
    assert "not valid JSON" in loaded.problems[0] and "JSON object" in loaded.problems[1]
    assert "missing 'output'" in loaded.problems[2]


def test_missing_file_and_unknown_suffix(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="nope.jsonl"):
        read_rows(tmp_path / "nope.jsonl")
    (tmp_path / "d.txt").write_text("x")
    with pytest.raises(DataError, match=r"\.json \.jsonl \.csv"):
        read_rows(tmp_path / "d.txt")


# --- files named by URL ---------------------------------------------------------------------------


def test_a_file_or_folder_named_by_url_reads_as_the_same_files_on_disk(tmp_path: Path) -> None:
    pq = pytest.importorskip("pyarrow.parquet")
    import pyarrow as pa

    folder = tmp_path / "in box"
    folder.mkdir()
    write_jsonl(folder / "a.jsonl", [{"id": "a1", "input": "张三"}, {"input": "没有编号"}, {"id": 3}])
    write_csv(folder / "b.csv", [{"id": "", "input": "李四"}, {"id": "b2", "input": "王五"}])
    pq.write_table(pa.Table.from_pylist([{"input": "赵六"}]), folder / "c.parquet")
    (folder / "notes.txt").write_text("not data", encoding="utf-8")
    local = load_inputs(folder, config(folder))

    def same(loaded, at):  # the ids and rows of a local read, each `where` the URL and line
        assert [(r.id, r.input, r.where) for r in loaded.records] == [
            (r.id, r.input, r.where.replace(str(folder), at)) for r in local.records]
        assert loaded.problems == [p.replace(str(folder), at) for p in local.problems]

    assert [r.id for r in local.records] == ["a1", "a-2", "b-2", "b2", "c-1"] and len(local.problems) == 1
    same(load_inputs(folder.as_uri(), config(folder)), folder.as_uri())  # through pyarrow's filesystem
    for name in ("a.jsonl", "b.csv"):
        one = load_inputs((folder / name).as_uri(), config(folder))
        assert [r.id for r in one.records] == [r.id for r in local.records if r.where.startswith(str(folder / name))]
    fsspec = pytest.importorskip("fsspec")  # a scheme pyarrow does not know goes through fsspec
    memory = fsspec.filesystem("memory")
    for path in folder.iterdir():
        memory.pipe(f"/urls-test/in box/{path.name}", path.read_bytes())
    same(load_inputs("memory://urls-test/in box", config(folder)), "memory://urls-test/in box")


def test_a_url_that_names_nothing_readable_is_a_data_error(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"^file://.*/nope\.jsonl: no such data file or folder"):
        load_inputs((tmp_path / "nope.jsonl").as_uri(), config(tmp_path))
    with pytest.raises(DataError, match=r"a folder with no data files"):
        load_inputs(tmp_path.as_uri(), config(tmp_path))
    with pytest.raises(DataError, match=r"nope://x/a\.jsonl: no installed filesystem reads nope:// URLs"):
        read_rows("nope://x/a.jsonl")


# --- record problems ----------------------------------------------------------------------------


def test_each_bad_record_is_reported_with_file_line(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "mixed.jsonl", [
        {"input": "good", "output": "ok", "id": "g1"},                # 1
        {"input": "no answer"},                                     # 2
        {"input": "  ", "output": "x"},                             # 3
        {"input": "n", "output": 3},                                # 4
        {"input": 5, "output": "x"},                                # 5
        {"input": "again", "output": "ok", "id": "g1"},             # 6
        {"input": "REJECT me", "output": "x"},                      # 7
        {"input": "good too", "output": "ok"},                      # 8
    ])
    loaded = load_records(path, config(path), check=lambda r: "label not allowed" if "REJECT" in r.input else None)
    assert [r.where for r in loaded.records] == [f"{path}:1", f"{path}:8"]
    expected = [(2, "missing 'output'"), (3, "'input' is empty"), (4, "'output' must be text or a JSON object, got int"),
                (5, "'input' must be text, got int"), (6, f"duplicate id 'g1' (first at {path}:1)"),
                (7, "label not allowed")]
    assert len(loaded.problems) == len(expected)
    for problem, (line, message) in zip(loaded.problems, expected):
        assert problem.startswith(f"{path}:{line}: ") and message in problem, problem
    assert len(loaded.records) + len(loaded.problems) == 8


def test_bad_messages_are_reported(tmp_path: Path) -> None:
    user, answer = {"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}
    path = write_jsonl(tmp_path / "m.jsonl", [
        {"messages": [user, answer]},
        {"messages": [user, {"role": "user", "content": "q2"}, answer]},
        {"messages": [user, {"role": "bot", "content": "a"}]},
        {"messages": [{"role": "system", "content": "s"}, answer]},
        {"messages": [user, {"role": "assistant", "content": 1}]},
        {"messages": [{"role": "system", "content": "s"}]},
    ])
    loaded = load_records(path, config(path, format="messages"))
    assert len(loaded.records) == 1
    expected = [(2, "'messages'[1] has role 'user' where 'assistant' was expected"),
                (3, "'messages'[1] has role 'bot'; use system/user/assistant"),
                (4, "'messages'[1] has role 'assistant' where 'user' was expected"),
                (5, "'messages'[1] content must be text, got int"),
                (6, "'messages' has no user message")]
    assert len(loaded.problems) == len(expected)
    for problem, (line, message) in zip(loaded.problems, expected):
        assert problem.startswith(f"{path}:{line}: ") and message in problem, problem


def test_bad_candidates_and_missing_column(tmp_path: Path) -> None:
    path = write_csv(tmp_path / "c.csv", [{"text": "t", "labels": "a,b", "answer": "a"},
                                          {"text": "", "labels": "a,b", "answer": "a"},
                                          {"text": "t", "labels": " , ", "answer": "a"}])
    data = config(path, format="columns", columns={"input": "text", "candidates": "labels", "output": "answer"})
    loaded = load_records(path, data)
    assert len(loaded.records) == 1
    assert loaded.problems[0].startswith(f"{path}:3: 'text' is empty")
    assert loaded.problems[1].startswith(f"{path}:4: 'labels' is empty")


# --- splits and duplicates ----------------------------------------------------------------------


def numbered(path: Path, n: int) -> Path:
    return write_jsonl(path, [{"input": f"text {i}", "output": f"out {i}"} for i in range(n)])


def test_split_is_deterministic_disjoint_and_complete(tmp_path: Path) -> None:
    data = config(numbered(tmp_path / "t.jsonl", 95), validation_share=0.1, test_share=0.2, split_seed=7)
    first, again = load_splits(data), load_splits(data)
    assert (first.train, first.validation, first.test) == (again.train, again.validation, again.test)
    assert (len(first.test), len(first.validation), len(first.train)) == (19, 10, 66)
    ids = [r.id for part in (first.train, first.validation, first.test) for r in part]
    assert len(ids) == len(set(ids)) == 95
    other = load_splits(data.model_copy(update={"split_seed": 8}))
    assert {r.id for r in other.test} != {r.id for r in first.test}


def test_split_sizes_small_and_zero(tmp_path: Path) -> None:
    data = config(numbered(tmp_path / "t.jsonl", 10), validation_share=0.01, test_share=0.01)
    splits = load_splits(data)
    assert (len(splits.test), len(splits.validation), len(splits.train)) == (1, 1, 8)
    splits = load_splits(data.model_copy(update={"validation_share": 0.0}))
    assert (len(splits.test), len(splits.validation), len(splits.train)) == (1, 0, 9)


def test_explicit_test_file_used_as_is(tmp_path: Path) -> None:
    test_file = write_jsonl(tmp_path / "test.jsonl", [{"input": "held out", "output": "x"}, {"input": "bad"}])
    data = config(numbered(tmp_path / "t.jsonl", 20), test=test_file, validation_share=0.1)
    splits = load_splits(data)
    assert [r.input for r in splits.test] == ["held out"]
    assert (len(splits.validation), len(splits.train)) == (2, 18)
    assert splits.problems == [f"{test_file}:2: missing 'output' (add the expected answer)"]


def test_find_duplicates(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "d.jsonl", [
        {"instruction": "I", "input": "same", "output": "a"},
        {"instruction": "I", "input": "other", "output": "a"},
        {"instruction": "I", "input": "same", "output": "b"},
        {"instruction": "J", "input": "same", "output": "a"},
        {"instruction": "I", "input": "same", "output": "a", "history": [["h", "i"]]},
    ])
    assert find_duplicates(load_records(path, config(path)).records) == [(f"{path}:1", f"{path}:3")]


# --- real data sets -----------------------------------------------------------------------------


def test_real_tnews() -> None:
    if not TNEWS.is_file():
        pytest.skip(f"{TNEWS} not present")
    data = config(TNEWS, format="columns", columns={"input": "sentence", "output": "label_desc", "id": "id"})
    loaded = load_records(TNEWS, data)
    assert loaded.problems == []
    assert len(loaded.records) == 1098
    assert loaded.records[0].id == "55" and loaded.records[0].output == "news_agriculture"


def test_real_huanhuan() -> None:
    if not HUANHUAN.is_file():
        pytest.skip(f"{HUANHUAN} not present")
    loaded = load_records(HUANHUAN, config(HUANHUAN))
    assert loaded.problems == []
    assert len(loaded.records) == 3729
    first = loaded.records[0]
    assert (first.input, first.instruction, first.where) == ("娘娘。", None, f"{HUANHUAN}:2")
