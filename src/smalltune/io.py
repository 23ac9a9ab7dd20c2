"""File writes and JSON Lines: a killed run never leaves a half-written result behind."""

from __future__ import annotations

import json
import os
import re
import tempfile
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, TextIO

from smalltune.errors import OutputError

LONE_SURROGATE = re.compile("[\ud800-\udfff]")  # half a UTF-16 pair: text no UTF-8 file (nor tokenizer) can hold
_ROW_START = re.compile(rb'\{"([^"\\]*)"\s*:')  # how a JSON line of ours begins: {"key":


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write bytes to path through a temporary file in the same folder (`.NAME.*.tmp`) and a rename: the file is
    whole or absent, never partly written."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    """Write text to path as UTF-8, atomically (`atomic_write_bytes`)."""
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: Path, value: Any) -> None:
    """Write value as indented UTF-8 JSON, atomically."""
    atomic_write_text(path, json.dumps(value, ensure_ascii=False, indent=2) + "\n")


def json_line(value: Any) -> str:
    """One JSON Lines line: the value as UTF-8 JSON (non-ASCII kept as it is) and a newline."""
    return json.dumps(value, ensure_ascii=False) + "\n"


def atomic_write_jsonl(path: Path, rows: Iterable[Any]) -> None:
    """Write one UTF-8 JSON value per line (JSON Lines), atomically."""
    atomic_write_text(path, "".join(json_line(row) for row in rows))


def append_jsonl(handle: TextIO, row: Any) -> None:
    """Append one row to an open JSON Lines file and flush it, so a killed run keeps every row written."""
    handle.write(json_line(row))
    handle.flush()


def read_jsonl(path: Path) -> list[Any]:
    """The values of a JSON Lines file (blank lines skipped)."""
    return [json.loads(line) for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip()]


def refuse_overwriting(outputs: Iterable[Path], inputs: Iterable[Path]) -> None:
    """OutputError when an output path is one of the input paths (compared resolved: two spellings of one file,
    or a link to it, are the same path)."""
    read = {Path(path).resolve(): Path(path) for path in inputs}
    for out in outputs:
        if Path(out).resolve() in read:
            raise OutputError(f"{out}: the output would overwrite the input {read[Path(out).resolve()]}; "
                              "choose another path")


def read_appended(path: Path, keys: Sequence[str]) -> list[dict]:
    """The rows of an append-only JSON Lines output of one kind, the file made ready to be appended to.

    A file is taken as this kind's output, written by smalltune, when it is missing or empty, or when every
    complete line is a JSON object holding all of `keys` (given in the order rows are written). A last line
    without its newline (left by a run killed mid-write) is cut off when it is such a row cut short: it begins
    `{"<keys[0]>":` and is not a whole JSON value that lacks a key. Any other file is left as it is, and
    OutputError names its first line that is not such a row.
    """
    path = Path(path)
    if path.exists() and not path.is_file():
        raise OutputError(f"{path}: not a file; give the output a file name")
    if not path.is_file():
        return []
    raw = path.read_bytes()
    complete, newline, torn = raw.rpartition(b"\n")
    lines = complete.split(b"\n") if newline else []
    rows = [_output_row(path, number, line, keys) for number, line in enumerate(lines, start=1) if line.strip()]
    if torn.strip():
        if not _cut_short(torn, keys):
            raise _not_ours(path, len(lines) + 1, keys)
        os.truncate(path, len(complete) + len(newline))
    return rows


def _cut_short(line: bytes, keys: Sequence[str]) -> bool:
    """Whether a last line without its newline is one of our rows cut short by a kill (or whole but for the newline)."""
    start = _ROW_START.match(line)
    if not start or start.group(1) != keys[0].encode("utf-8"):
        return False
    try:
        row = json.loads(line)
    except (ValueError, RecursionError):  # cut short: not (yet) JSON
        return True
    return isinstance(row, dict) and all(key in row for key in keys)


def _output_row(path: Path, number: int, line: bytes, keys: Sequence[str]) -> dict:
    """One complete line of an output file: a JSON object holding all of `keys`, or OutputError."""
    try:
        row = json.loads(line.decode("utf-8"))
    except (ValueError, RecursionError):  # not UTF-8, not JSON, or JSON Python cannot hold
        row = None
    if not (isinstance(row, dict) and all(key in row for key in keys)):
        raise _not_ours(path, number, keys)
    return row


def _not_ours(path: Path, number: int, keys: Sequence[str]) -> OutputError:
    return OutputError(f"{path}:{number}: not a row of this command's output (a JSON object with "
                       f"{', '.join(map(repr, keys))}), so the file was not written by it; it is left as it is: "
                       "give the output another file name")
