"""Records: one example whatever file it came from; loading a file with file:line problems, splitting, duplicates."""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from smalltune.config import DataConfig
from smalltune.data.html import PAGE_SUFFIXES
from smalltune.data.readers import RecordProblem, data_files, data_path, read_rows
from smalltune.data.remote import RemotePath
from smalltune.errors import DataError
from smalltune.registry import FORMATS


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


@dataclass(frozen=True)
class Invalid:
    """A row that is not a valid record: where it is, its id (the row's own when the row could be read and its
    id is valid, else the id a record there would get: file stem and line), and why."""

    where: str
    id: str
    reason: str

    def __str__(self) -> str:
        return f"{self.where}: {self.reason}"


@dataclass
class Loaded:
    """The valid records of one file and the invalid rows, each reported as 'file:line: message'."""

    records: list[Record]
    invalid: list[Invalid]

    @property
    def problems(self) -> list[str]:
        """One 'file:line: message' per invalid row."""
        return [str(row) for row in self.invalid]


@dataclass
class Splits:
    """Train, validation and test records, and the problems of every file read."""

    train: list[Record]
    validation: list[Record]
    test: list[Record]
    problems: list[str]


def _record_id(row: dict, key: str, default: str) -> str:
    """The row's id as text, or default when it has none."""
    value = row.get(key)
    if value is None or value == "":
        return default
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise RecordProblem(f"'{key}' must be text or a whole number, got {type(value).__name__}")
    return str(value).strip()


def load_records(path: Path | str | RemotePath, data: DataConfig, *, require_output: bool = True,
                 check: Callable[[Record], str | None] | None = None) -> Loaded:
    """Read one file (a path or a URL) in data.format; each invalid record becomes one 'file:line: message'
    problem. An .html/.htm file is one record: its id the file name, its `where` the file."""
    path = data_path(path)
    page = path.suffix.lower() in PAGE_SUFFIXES
    layout = FORMATS.get(data.format)()
    id_key = layout.id_key(data.columns)
    read_keys = layout.read_keys(data.columns)
    loaded = Loaded(records=[], invalid=[])
    first_at: dict[str, str] = {}
    for line, row in read_rows(path):
        where, record_id = (str(path), path.name) if page else (f"{path}:{line}", f"{path.stem}-{line}")
        try:
            if isinstance(row, RecordProblem):
                raise row
            record_id = _record_id(row, id_key, record_id)
            if record_id in first_at:
                raise RecordProblem(f"duplicate id '{record_id}' (first at {first_at[record_id]}); give each record its own id")
            extra = {key: value for key, value in row.items() if key not in read_keys}
            record = Record(id=record_id, where=where, extra=extra, **layout.read(row, data.columns, require_output))
            message = check(record) if check else None
            if message:
                raise RecordProblem(message)
        except RecordProblem as exc:
            loaded.invalid.append(Invalid(where, record_id, str(exc)))
            continue
        first_at[record_id] = where
        loaded.records.append(record)
    return loaded


def load_inputs(path: Path | str | RemotePath, data: DataConfig) -> Loaded:
    """The records (outputs not required) and invalid rows of a file, or of every data file in a folder
    (`readers.data_files`: JSON, JSONL, CSV, Parquet, .html/.htm pages), local or named by URL (s3://, hf://,
    file://, ...: `data.remote`); DataError when two records share an id."""
    loaded = Loaded(records=[], invalid=[])
    where: dict[str, str] = {}
    for file in data_files(path):
        one = load_records(file, data, require_output=False)
        for record in one.records:
            if record.id in where:
                raise DataError(f"{record.where}: id {record.id!r} is also the id of {where[record.id]}; each record "
                                "needs its own id for the output to hold it exactly once")
            where[record.id] = record.where
        loaded.records += one.records
        loaded.invalid += one.invalid
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


def record_row(record: Record, data: DataConfig) -> dict[str, Any]:
    """The record as a row of the task's data format, its extra columns kept, so the task file reads it back."""
    layout = FORMATS.get(data.format)()
    row = layout.write(record, data.columns)
    clashes = sorted(set(record.extra) & (set(row) | layout.read_keys(data.columns)))
    if clashes:
        raise DataError(f"{record.where}: column(s) {clashes} are not read by the source format but are fields "
                        f"of the {data.format} format; rename or drop them")
    return {**row, **record.extra}
