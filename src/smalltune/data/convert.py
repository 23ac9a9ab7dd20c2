"""`smalltune data convert`: the seed tasks' data formats to the one JSONL a task file reads with `format: alpaca`.

The target, one JSON object per line:

    {"id": ..., "system": ..., "instruction": ..., "input": ..., "history": [[user, assistant], ...],
     "candidates": [label, ...], "output": ...}

`id`, `input` always; `output` when the record has an answer; the others only when the record has
them. Columns no format reads (say a page's `html`) are carried over as they are. Read back with
`format: alpaca` (plus `columns: {candidates: candidates}` when records list their label choices, as
`Converted.data` says), every converted record is the record the source file held.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from smalltune.config import DataConfig
from smalltune.data.records import load_records, record_row
from smalltune.errors import ConfigError, DataError, OutputError
from smalltune.io import atomic_write_jsonl, refuse_overwriting

SOURCE_FORMATS: dict[str, dict] = {
    "alpaca": {"format": "alpaca"},
    "fudan-news": {"format": "columns", "columns": {"input": "text", "output": "output", "candidates": "category"}},
    "messages": {"format": "messages"},
}
_SHOWN_PROBLEMS = 20


@dataclass(frozen=True)
class Converted:
    """How many records were written, and the task file's `data` settings that read them back."""

    count: int
    data: dict


def convert_file(source: Path, target: Path, source_format: str) -> Converted:
    """Convert every record of `source` (JSON, JSONL, CSV or Parquet) to JSONL at `target`.

    Writes nothing when any record is invalid: DataError lists each as file:line.
    """
    if source_format not in SOURCE_FORMATS:
        raise ConfigError(f"--from {source_format!r}: use one of {', '.join(SOURCE_FORMATS)}")
    source, target = Path(source), Path(target)
    refuse_overwriting([target], [source])
    if target.is_dir():
        example = target / source.with_suffix(".jsonl").name
        raise OutputError(f"{target}: is a folder; give the JSONL file to write, e.g. {example}")
    loaded = load_records(source, DataConfig(train=source, **SOURCE_FORMATS[source_format]), require_output=False)
    if loaded.problems:
        shown = loaded.problems[:_SHOWN_PROBLEMS]
        more = len(loaded.problems) - len(shown)
        raise DataError(f"{len(loaded.problems)} invalid record(s), nothing written:\n" + "\n".join(shown)
                        + (f"\n... and {more} more" if more else ""))
    if not loaded.records:
        raise DataError(f"{source}: no records to convert")
    data = {"train": str(target), "format": "alpaca"}
    if any(record.candidates for record in loaded.records):
        data["columns"] = {"candidates": "candidates"}
    written = DataConfig(**data)
    atomic_write_jsonl(target, [record_row(record, written) for record in loaded.records])
    return Converted(len(loaded.records), data)
