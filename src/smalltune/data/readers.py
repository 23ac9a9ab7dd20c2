"""Rows out of data files: JSON (array or one object per line), JSON Lines, CSV and Parquet, each row with the
line it starts on, in UTF-8 (with or without BOM) or GBK."""

from __future__ import annotations

import csv
import io
import json
import re
from pathlib import Path
from typing import Any

from smalltune.errors import DataError

SUFFIXES = (".json", ".jsonl", ".csv", ".parquet")
_WHITESPACE = re.compile(r"[ \t\n\r]*")


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
