"""Read examples from JSON, JSON Lines, CSV or Parquet; validate them with file:line; split deterministically."""

from __future__ import annotations

import csv
import io
import json
import random
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from smalltune.config import DataConfig
from smalltune.errors import DataError

SUFFIXES = (".json", ".jsonl", ".csv", ".parquet")
_ROLES = ("system", "user", "assistant")
_WHITESPACE = re.compile(r"[ \t\n\r]*")
_LABEL_SEPARATORS = re.compile(r"[,，、|;；]")


@dataclass(frozen=True)
class Record:
    """One example, whatever file format it came from."""

    id: str
    where: str
    input: str
    output: str | dict | None
    instruction: str | None = None
    system: str | None = None
    history: tuple[dict, ...] = ()
    candidates: tuple[str, ...] = ()
    extra: dict[str, Any] = field(default_factory=dict)  # the row's columns no role reads (e.g. a page's html)


@dataclass
class Loaded:
    """The valid records of one file and one 'file:line: message' per invalid one."""

    records: list[Record]
    problems: list[str]


@dataclass
class Splits:
    """Train, validation and test records, and the problems of every file read."""

    train: list[Record]
    validation: list[Record]
    test: list[Record]
    problems: list[str]


class _Bad(Exception):
    """A record-level problem; the message names the field and how to fix it."""


def read_rows(path: Path) -> list[tuple[int, dict]]:
    """Return (1-based start line, object) for each row of a .json, .jsonl, .csv or .parquet file."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in SUFFIXES:
        raise DataError(f"{path}: unsupported file type '{suffix}'; use one of {' '.join(SUFFIXES)}")
    if not path.is_file():
        raise DataError(f"{path}: no such data file")
    if suffix == ".parquet":
        return _parquet_rows(path)
    text = _decode(path)
    if suffix == ".csv":
        return _csv_rows(text, path)
    if suffix == ".json" and text.lstrip().startswith("["):
        return _json_array_rows(text, path)
    return _jsonl_rows(text, path)


def _decode(path: Path) -> str:
    """The file's text as UTF-8 (with or without BOM) or, failing that, GBK/GB18030."""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise DataError(f"{path}: cannot read: {exc.strerror}") from exc
    for encoding in ("utf-8-sig", "gb18030"):
        try:
            return raw.decode(encoding)
        except UnicodeDecodeError:
            continue
    raise DataError(f"{path}: not UTF-8 or GBK text")


def _as_object(value: Any, path: Path, line: int) -> dict:
    """The row itself; anything but a JSON object is a file-level error."""
    if not isinstance(value, dict):
        raise DataError(f"{path}:{line}: expected a JSON object per record, got {type(value).__name__}")
    return value


def _json_array_rows(text: str, path: Path) -> list[tuple[int, dict]]:
    """Scan a JSON array element by element so each object's starting line is exact."""
    decoder = json.JSONDecoder()
    rows: list[tuple[int, dict]] = []
    pos = _WHITESPACE.match(text, text.index("[") + 1).end()
    line, counted, newline = 1, 0, "\n"
    while rows or not text.startswith("]", pos):
        try:
            value, end = decoder.raw_decode(text, pos)
        except json.JSONDecodeError as exc:
            raise DataError(f"{path}:{exc.lineno}: not valid JSON: {exc.msg} (column {exc.colno})") from exc
        line += text.count(newline, counted, pos)
        counted = pos
        rows.append((line, _as_object(value, path, line)))
        pos = _WHITESPACE.match(text, end).end()
        if text.startswith("]", pos):
            break
        if not text.startswith(",", pos):
            raise DataError(f"{path}:{text.count(newline, 0, pos) + 1}: not valid JSON: expected ',' or ']'")
        pos = _WHITESPACE.match(text, pos + 1).end()
    if text[pos + 1 :].strip():
        raise DataError(f"{path}:{text.count(newline, 0, pos) + 1}: not valid JSON: extra data after the array")
    return rows


def _jsonl_rows(text: str, path: Path) -> list[tuple[int, dict]]:
    """One object per line; blank lines are skipped. Splits on '\\n' only (JSON may hold raw U+2028)."""
    rows = []
    for line, chunk in enumerate(text.split("\n"), start=1):
        if not chunk.strip():
            continue
        try:
            value = json.loads(chunk)
        except json.JSONDecodeError as exc:
            raise DataError(f"{path}:{line}: not valid JSON: {exc.msg} (column {exc.colno})") from exc
        rows.append((line, _as_object(value, path, line)))
    return rows


def _csv_rows(text: str, path: Path) -> list[tuple[int, dict]]:
    """Header on line 1; each row numbered by the physical line it starts on."""
    reader = csv.reader(io.StringIO(text, newline=""))
    rows: list[tuple[int, dict]] = []
    try:
        header = next(reader, [])
        last = reader.line_num
        for cells in reader:
            start, last = last + 1, reader.line_num
            if not cells:
                continue
            if len(cells) > len(header):
                raise DataError(f"{path}:{start}: {len(cells)} fields but the header has {len(header)}; quote text holding commas")
            rows.append((start, dict(zip(header, cells))))
    except csv.Error as exc:
        raise DataError(f"{path}:{reader.line_num}: not valid CSV: {exc}") from exc
    return rows


def _parquet_rows(path: Path) -> list[tuple[int, dict]]:
    """Rows numbered from 1; needs pyarrow."""
    try:
        import pyarrow.parquet as pq
    except ImportError as exc:
        raise DataError(f"{path}: reading .parquet files needs pyarrow (pip install pyarrow)") from exc
    try:
        table = pq.read_table(path)
    except Exception as exc:  # pyarrow raises several unrelated types for a bad file
        raise DataError(f"{path}: not a readable Parquet file: {exc}") from exc
    return list(enumerate(table.to_pylist(), start=1))


def _optional_text(row: dict, key: str) -> str | None:
    """The text under key, or None when absent, null or blank."""
    value = row.get(key)
    if value is None:
        return None
    if not isinstance(value, str):
        raise _Bad(f"'{key}' must be text, got {type(value).__name__}")
    return value if value.strip() else None


def _required_text(row: dict, key: str) -> str:
    """The text under key; absent or blank is a problem."""
    if row.get(key) is None:
        raise _Bad(f"missing '{key}' (add the text)")
    value = _optional_text(row, key)
    if value is None:
        raise _Bad(f"'{key}' is empty (add the text)")
    return value


def _output(row: dict, key: str, required: bool) -> str | dict | None:
    """A text or a JSON object; None only when outputs are not required."""
    value = row.get(key)
    if isinstance(value, dict) or (isinstance(value, str) and value.strip()):
        return value
    if value is not None and not isinstance(value, str):
        raise _Bad(f"'{key}' must be text or a JSON object, got {type(value).__name__} (quote it)")
    if required:
        raise _Bad(f"missing '{key}' (add the expected answer)" if value is None else f"'{key}' is empty (add the expected answer)")
    return None


def _record_id(row: dict, key: str, default: str) -> str:
    """The row's id as text, or default when it has none."""
    value = row.get(key)
    if value is None or value == "":
        return default
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise _Bad(f"'{key}' must be text or a whole number, got {type(value).__name__}")
    return str(value).strip()


def _history_pairs(value: Any) -> tuple[dict, ...]:
    """LLaMA-Factory history: [[user, assistant], ...] -> role/content messages."""
    if value is None:
        return ()
    if not isinstance(value, list):
        raise _Bad("'history' must be a list of [user, assistant] pairs")
    turns: list[dict] = []
    for i, pair in enumerate(value):
        if not (isinstance(pair, (list, tuple)) and len(pair) == 2 and all(isinstance(t, str) for t in pair)):
            raise _Bad(f"'history'[{i}] must be a [user, assistant] pair of texts")
        turns += [{"role": "user", "content": pair[0]}, {"role": "assistant", "content": pair[1]}]
    return tuple(turns)


def _candidates(row: dict, key: str) -> tuple[str, ...]:
    """Label choices from a list or from text separated by , ， 、 | or ;."""
    value = row.get(key)
    if isinstance(value, str):
        items = _LABEL_SEPARATORS.split(value)
    elif isinstance(value, list) and all(isinstance(v, str) for v in value):
        items = value
    elif value is None:
        raise _Bad(f"missing '{key}' (list the label choices)")
    else:
        raise _Bad(f"'{key}' must be a list of labels or comma-separated text, got {type(value).__name__}")
    labels = tuple(s.strip() for s in items if s.strip())
    if not labels:
        raise _Bad(f"'{key}' is empty (list the label choices)")
    return labels


def _alpaca(row: dict, columns: dict[str, str], require_output: bool) -> dict:
    """instruction/input/output[/system/history]; an empty input takes the instruction's text."""
    instruction = _optional_text(row, "instruction")
    text = _optional_text(row, "input")
    if text is None and instruction is None:
        raise _Bad("'input' is empty and so is 'instruction' (give the text in 'input')")
    if text is None:
        text, instruction = instruction, None
    fields = {"input": text, "instruction": instruction, "system": _optional_text(row, "system"),
              "output": _output(row, "output", require_output), "history": _history_pairs(row.get("history"))}
    if "candidates" in columns:
        fields["candidates"] = _candidates(row, columns["candidates"])
    return fields


def _check_message(i: int, message: Any) -> None:
    """One {role, content} item with a known role and non-empty text."""
    if not isinstance(message, dict):
        raise _Bad(f"'messages'[{i}] must be an object with 'role' and 'content'")
    if message.get("role") not in _ROLES:
        raise _Bad(f"'messages'[{i}] has role {message.get('role')!r}; use system/user/assistant")
    content = message.get("content")
    if not isinstance(content, str):
        raise _Bad(f"'messages'[{i}] content must be text, got {type(content).__name__}")
    if not content.strip():
        raise _Bad(f"'messages'[{i}] content is empty")


def _messages(row: dict, columns: dict[str, str], require_output: bool) -> dict:
    """OpenAI-style messages: [system], user, assistant, ..., ending with the answer."""
    messages = row.get("messages")
    if messages is None:
        raise _Bad("missing 'messages' (a list of {role, content})")
    if not isinstance(messages, list) or not messages:
        raise _Bad("'messages' must be a non-empty list of {role, content}")
    for i, message in enumerate(messages):
        _check_message(i, message)
    start = 1 if messages[0]["role"] == "system" else 0
    turns = messages[start:]
    for j, message in enumerate(turns):
        expected = "user" if j % 2 == 0 else "assistant"
        if message["role"] != expected:
            raise _Bad(f"'messages'[{start + j}] has role '{message['role']}' where '{expected}' was expected; "
                       "after an optional leading system message, roles must alternate user/assistant")
    if not turns:
        raise _Bad("'messages' has no user message")
    output = None
    if turns[-1]["role"] == "assistant":
        output, turns = turns[-1]["content"], turns[:-1]
    elif require_output:
        raise _Bad("'messages' must end with an assistant message (the expected answer)")
    return {"input": turns[-1]["content"], "output": output, "system": messages[0]["content"] if start else None,
            "history": tuple({"role": m["role"], "content": m["content"]} for m in turns[:-1])}


def _columns(row: dict, columns: dict[str, str], require_output: bool) -> dict:
    """Named columns mapped to our roles; input and output default to columns of the same name."""
    name = {"input": "input", "output": "output", **columns}
    fields: dict[str, Any] = {"input": _required_text(row, name["input"]),
                              "output": _output(row, name["output"], require_output)}
    for role in ("instruction", "system"):
        if role in name:
            fields[role] = _optional_text(row, name[role])
    if "candidates" in name:
        fields["candidates"] = _candidates(row, name["candidates"])
    return fields


def _read_keys(data: DataConfig) -> set[str]:
    """The row keys the format's reader consumes; the others become Record.extra."""
    if data.format == "alpaca":
        mapped = {data.columns["candidates"]} if "candidates" in data.columns else set()
        return {"id", "instruction", "input", "output", "system", "history", *mapped}
    if data.format == "messages":
        return {"id", "messages"}
    return set({"input": "input", "output": "output", "id": "id", **data.columns}.values())


_FORMATS: dict[str, Callable[[dict, dict[str, str], bool], dict]] = {
    "alpaca": _alpaca, "messages": _messages, "columns": _columns}


def load_records(path: Path, data: DataConfig, *, require_output: bool = True,
                 check: Callable[[Record], str | None] | None = None) -> Loaded:
    """Read one file in data.format; each invalid record becomes one 'file:line: message' problem."""
    path = Path(path)
    parse = _FORMATS[data.format]
    id_key = data.columns.get("id", "id") if data.format == "columns" else "id"
    read_keys = _read_keys(data)
    loaded = Loaded(records=[], problems=[])
    first_at: dict[str, str] = {}
    for line, row in read_rows(path):
        where = f"{path}:{line}"
        try:
            record_id = _record_id(row, id_key, f"{path.stem}-{line}")
            if record_id in first_at:
                raise _Bad(f"duplicate id '{record_id}' (first at {first_at[record_id]}); give each record its own id")
            extra = {key: value for key, value in row.items() if key not in read_keys}
            record = Record(id=record_id, where=where, extra=extra, **parse(row, data.columns, require_output))
            message = check(record) if check else None
            if message:
                raise _Bad(message)
        except _Bad as exc:
            loaded.problems.append(f"{where}: {exc}")
            continue
        first_at[record_id] = where
        loaded.records.append(record)
    return loaded


def _split_size(n: int, share: float, left: int) -> int:
    """round(n*share), at least 1 when share > 0 and n >= 10, always leaving one record for train."""
    size = round(n * share)
    if share > 0 and n >= 10:
        size = max(size, 1)
    return min(size, max(left - 1, 0))


def load_splits(data: DataConfig, check: Callable[[Record], str | None] | None = None) -> Splits:
    """Load train (and validation/test files when set); split missing ones off train by data.split_seed."""
    train = load_records(data.train, data, check=check)
    given = {name: load_records(path, data, check=check)
             for name in ("validation", "test") if (path := getattr(data, name)) is not None}
    pool = list(range(len(train.records)))
    random.Random(data.split_seed).shuffle(pool)
    taken: dict[str, list[Record]] = {}
    for name, share in (("test", data.test_share), ("validation", data.validation_share)):
        if name in given:
            taken[name] = given[name].records
        else:
            size = _split_size(len(train.records), share, len(pool))
            taken[name] = [train.records[i] for i in sorted(pool[:size])]
            pool = pool[size:]
    problems = train.problems + [p for loaded in given.values() for p in loaded.problems]
    return Splits(train=[train.records[i] for i in sorted(pool)], validation=taken["validation"],
                  test=taken["test"], problems=problems)


def find_duplicates(records: list[Record]) -> list[tuple[str, str]]:
    """(where of first, where of duplicate) for records with the same instruction, input and history."""
    first: dict[tuple, str] = {}
    pairs: list[tuple[str, str]] = []
    for record in records:
        key = (record.instruction, record.input, tuple((t["role"], t["content"]) for t in record.history))
        if key in first:
            pairs.append((first[key], record.where))
        else:
            first[key] = record.where
    return pairs
