"""File writes and JSON Lines: a killed run never leaves a half-written result behind."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any, TextIO


def atomic_write_text(path: Path, text: str) -> None:
    """Write text to path through a temporary file in the same folder and a rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


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


def read_appended(path: Path) -> list[dict]:
    """The rows of an append-only JSONL file; a torn last line (left by a killed run) is cut off first."""
    path = Path(path)
    if not path.is_file():
        return []
    raw = path.read_bytes()
    if raw and not raw.endswith(b"\n"):
        raw = raw[: raw.rfind(b"\n") + 1]
        path.write_bytes(raw)
    return [json.loads(line) for line in raw.decode("utf-8").splitlines() if line.strip()]
