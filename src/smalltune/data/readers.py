"""Rows out of data files: JSON (array or one object per line), JSON Lines, CSV and Parquet, each row with the
line it starts on, in UTF-8 (with or without BOM) or GBK; an .html/.htm page is one row `{"html": page}` on
line 1, decoded by `data.html.decode_html`. A file or folder may also be named by URL (s3://, hf://, file://, ...):
it is read through `data.remote`, with the same rows.

Decoding: a file is read as UTF-8 when the whole of it is UTF-8. Otherwise it is decoded line by line: when
every line holding non-ASCII bytes fails UTF-8 and reads as GB18030 (a superset of GBK), it is a GBK file;
when some lines are UTF-8 and others are not, the file is UTF-8 and each other line is reported as
`file:line: not UTF-8 text (...)`, never re-decoded as something else. A row that cannot be read (such a
line, a JSON Lines line that is not a JSON object, text holding a lone surrogate) is returned as a
`RecordProblem` in its place, so that every bad row is reported and the good ones are still read; what
breaks the whole file (an unreadable header or JSON array) is a `DataError`.
"""

from __future__ import annotations

import csv
import io
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from smalltune.data.html import PAGE_SUFFIXES, decode_html
from smalltune.data.remote import RemotePath, is_url
from smalltune.errors import DataError
from smalltune.io import LONE_SURROGATE

SUFFIXES = (".json", ".jsonl", ".csv", ".parquet", *PAGE_SUFFIXES)
_WHITESPACE = re.compile(r"[ \t\n\r]*")


class RecordProblem(Exception):
    """A record-level problem; the message names the field and how to fix it."""


Row = tuple[int, dict | RecordProblem]
DataPath = Path | RemotePath  # a local file or folder, or one named by URL


@dataclass(frozen=True)
class _Decoded:
    """A text file's text, with the lines that are not UTF-8 (in a UTF-8 file) replaced and described."""

    text: str
    unreadable: dict[int, str]  # 1-based line -> why it could not be decoded


def data_path(path: Path | str | RemotePath) -> DataPath:
    """A local path as a `Path`, a URL string as a `RemotePath` (looked up: DataError when unreachable)."""
    if isinstance(path, RemotePath):
        return path
    return RemotePath.of(path) if is_url(path) else Path(path)


def local_path(path: DataPath) -> Path | None:
    """The local file or folder a data path names (a file:// URL's too), for the checks that an output never
    overwrites an input; None for a remote one."""
    return path if isinstance(path, Path) else path.local


def read_rows(path: Path | str | RemotePath) -> list[tuple[int, dict | RecordProblem]]:
    """(1-based start line, object) for each row of a .json, .jsonl, .csv, .parquet or .html/.htm file (a path or
    a URL); a row that cannot be read comes as (line, RecordProblem) in its place. DataError when the file as a
    whole cannot be read."""
    path = data_path(path)
    suffix = path.suffix.lower()
    if suffix not in SUFFIXES:
        raise DataError(f"{path}: unsupported file type '{suffix}'; use one of {' '.join(SUFFIXES)}")
    if not path.is_file():
        raise DataError(f"{path}: no such data file")
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise DataError(f"{path}: cannot read: {exc.strerror or exc}") from exc
    if suffix == ".parquet":
        return _parquet_rows(raw, path)
    if suffix in PAGE_SUFFIXES:
        return [(1, {"html": decode_html(raw)})]
    decoded = _decode(raw, path)
    if suffix == ".csv":
        return _csv_rows(decoded, path)
    if suffix == ".json" and decoded.text.lstrip().startswith("["):
        return _json_array_rows(decoded, path)
    return _jsonl_rows(decoded, path)


def data_files(path: Path | str | RemotePath) -> list[DataPath]:
    """The file, or the data files (`SUFFIXES`) of a folder by name, resolved (a path, or a URL: `data_path`);
    DataError when there are none."""
    path = data_path(path)
    if not path.exists():
        raise DataError(f"{path}: no such data file or folder")
    if path.is_file():
        return [path.resolve()]
    found = sorted(p.resolve() for p in path.iterdir() if p.is_file() and p.suffix.lower() in SUFFIXES)
    if not found:
        raise DataError(f"{path}: a folder with no data files ({' '.join(SUFFIXES)}) in it")
    return found


def read_objects(path: Path | str | RemotePath) -> list[tuple[int, dict]]:
    """The rows of a file that must be readable throughout; DataError names each row that is not."""
    rows = read_rows(path)
    bad = [f"{path}:{line}: {row}" for line, row in rows if isinstance(row, RecordProblem)]
    if bad:
        raise DataError("\n".join(bad))
    return [(line, row) for line, row in rows if isinstance(row, dict)]


def _decode(raw: bytes, path: DataPath) -> _Decoded:
    """The file's text: UTF-8 (with or without BOM), GBK/GB18030, or UTF-8 with its other lines described."""
    try:
        return _Decoded(raw.decode("utf-8-sig"), {})
    except UnicodeDecodeError:
        pass
    lines = raw.split(b"\n")
    failed: dict[int, UnicodeDecodeError] = {}
    for number, chunk in enumerate(lines, start=1):
        if not chunk.isascii():
            try:
                chunk.decode("utf-8-sig")
            except UnicodeDecodeError as exc:
                failed[number] = exc
    if len(failed) == sum(not chunk.isascii() for chunk in lines):  # no line is UTF-8: a GBK file, or neither
        try:
            return _Decoded(raw.decode("gb18030"), {})
        except UnicodeDecodeError as exc:
            line = raw.count(b"\n", 0, exc.start) + 1
            raise DataError(f"{path}:{line}: not UTF-8 or GBK text; save the file as UTF-8") from exc
    text = "\n".join(chunk.decode("utf-8-sig", errors="replace") for chunk in lines)
    unreadable = {number: f"not UTF-8 text (byte 0x{lines[number - 1][exc.start]:02x} at byte {exc.start + 1} of "
                          "the line, where the file's other lines are UTF-8); save this line as UTF-8"
                  for number, exc in failed.items()}
    return _Decoded(text, unreadable)


def _row(line: int, value: Any) -> Row:
    """(line, the object), or (line, the problem that keeps the value from being a record)."""
    if not isinstance(value, dict):
        return line, RecordProblem(f"expected a JSON object per record, got {type(value).__name__}")
    at = _lone_surrogate_at(value)
    if at is not None:
        return line, RecordProblem(f"{at} holds a lone surrogate (half of a UTF-16 pair, from a JSON escape such "
                                   "as \\ud800); write the character itself or remove the escape")
    return line, value


def _lone_surrogate_at(row: dict) -> str | None:
    """Where a text in the row (a key or a string, at any depth) holds a lone surrogate, as 'key'[i]...; or None."""
    stack: list[tuple[str, Any]] = [("", row)]
    while stack:
        at, value = stack.pop()
        if isinstance(value, str):
            if LONE_SURROGATE.search(value):
                return at
            continue
        items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
        for key, item in items:
            inner = f"{at}[{key!r}]" if at else repr(key)
            if isinstance(key, str) and LONE_SURROGATE.search(key):
                return f"the key {inner}"
            stack.append((inner, item))
    return None


def _not_json(exc: ValueError | RecursionError) -> str:
    """Why a text is not JSON that Python can hold (bad syntax, nested too deeply, an over-long number)."""
    if isinstance(exc, json.JSONDecodeError):
        return f"not valid JSON: {exc.msg} (column {exc.colno})"
    return f"not readable JSON: {'nested too deeply' if isinstance(exc, RecursionError) else exc}"


def _json_array_rows(decoded: _Decoded, path: DataPath) -> list[Row]:
    """Scan a JSON array element by element so each object's starting line is exact."""
    if decoded.unreadable:
        raise DataError("\n".join(f"{path}:{line}: {why}" for line, why in decoded.unreadable.items()))
    text = decoded.text
    decoder = json.JSONDecoder()
    rows: list[Row] = []
    pos = _WHITESPACE.match(text, text.index("[") + 1).end()
    line, counted, newline = 1, 0, "\n"
    while rows or not text.startswith("]", pos):
        try:
            value, end = decoder.raw_decode(text, pos)
        except (ValueError, RecursionError) as exc:
            at = exc.lineno if isinstance(exc, json.JSONDecodeError) else text.count(newline, 0, pos) + 1
            raise DataError(f"{path}:{at}: {_not_json(exc)}") from exc
        line += text.count(newline, counted, pos)
        counted = pos
        rows.append(_row(line, value))
        pos = _WHITESPACE.match(text, end).end()
        if text.startswith("]", pos):
            break
        if not text.startswith(",", pos):
            raise DataError(f"{path}:{text.count(newline, 0, pos) + 1}: not valid JSON: expected ',' or ']'")
        pos = _WHITESPACE.match(text, pos + 1).end()
    if text[pos + 1 :].strip():
        raise DataError(f"{path}:{text.count(newline, 0, pos) + 1}: not valid JSON: extra data after the array")
    return rows


def _jsonl_rows(decoded: _Decoded, path: DataPath) -> list[Row]:
    """One object per line; blank lines are skipped. Splits on '\\n' only (JSON may hold raw U+2028)."""
    rows: list[Row] = []
    for line, chunk in enumerate(decoded.text.split("\n"), start=1):
        if line in decoded.unreadable:
            rows.append((line, RecordProblem(decoded.unreadable[line])))
            continue
        if not chunk.strip():
            continue
        try:
            value = json.loads(chunk)
        except (ValueError, RecursionError) as exc:
            rows.append((line, RecordProblem(_not_json(exc))))
            continue
        rows.append(_row(line, value))
    return rows


def _csv_rows(decoded: _Decoded, path: DataPath) -> list[Row]:
    """Header on line 1; each row numbered by the physical line it starts on."""
    if 1 in decoded.unreadable:
        raise DataError(f"{path}:1: the header is {decoded.unreadable[1]}")
    reader = csv.reader(io.StringIO(decoded.text, newline=""))
    rows: list[Row] = []
    try:
        header = next(reader, [])
        last = reader.line_num
        for cells in reader:
            start, last = last + 1, reader.line_num
            unreadable = [decoded.unreadable[n] for n in range(start, last + 1) if n in decoded.unreadable]
            if unreadable:
                rows.append((start, RecordProblem(unreadable[0])))
            elif len(cells) > len(header):
                rows.append((start, RecordProblem(f"{len(cells)} fields but the header has {len(header)}; "
                                                  "quote text holding commas")))
            elif cells:
                rows.append((start, dict(zip(header, cells))))
    except csv.Error as exc:
        raise DataError(f"{path}:{reader.line_num}: not valid CSV: {exc}") from exc
    return rows


def _parquet_rows(raw: bytes, path: DataPath) -> list[Row]:
    """Rows numbered from 1; needs pyarrow."""
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError as exc:
        raise DataError(f"{path}: reading .parquet files needs pyarrow (pip install pyarrow)") from exc
    try:
        table = pq.read_table(pa.BufferReader(raw))
    except Exception as exc:  # pyarrow raises several unrelated types for a bad file
        raise DataError(f"{path}: not a readable Parquet file: {exc}") from exc
    return list(enumerate(table.to_pylist(), start=1))
