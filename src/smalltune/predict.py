"""`smalltune predict`: a file of records in, one JSON line per record out, resumable."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from smalltune.data import load_records
from smalltune.errors import DataError
from smalltune.infer import Engine


def _done_ids(out: Path) -> set[str]:
    """Ids already answered by an earlier, interrupted run; a torn last line is cut off first."""
    if not out.is_file():
        return set()
    raw = out.read_bytes()
    if raw and not raw.endswith(b"\n"):
        raw = raw[: raw.rfind(b"\n") + 1]
        out.write_bytes(raw)
    return {json.loads(line)["id"] for line in raw.decode("utf-8").splitlines() if line.strip()}


def predict_file(
    run_dir: Path,
    input_file: Path,
    out: Path,
    on_start: Callable[[int], None] | None = None,
    on_batch: Callable[[int], None] | None = None,
) -> int:
    """Answer each record not yet in `out`, appending one line per record; returns how many were written."""
    engine = Engine.from_run(run_dir)
    loaded = load_records(Path(input_file), engine.config.data, require_output=False)
    if loaded.problems:
        raise DataError("invalid input records:\n" + "\n".join(loaded.problems))
    done = _done_ids(out)
    todo = [r for r in loaded.records if r.id not in done]
    if on_start:
        on_start(len(todo))
    chunk = engine.config.infer.batch_size * 4
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("a", encoding="utf-8") as handle:
        for start in range(0, len(todo), chunk):
            records = todo[start : start + chunk]
            generation = engine.generate(records, on_batch)
            for record, text, cut in zip(records, generation.texts, generation.truncated):
                parsed = engine.task.parse(text, record)
                row = {"id": record.id, "answer": text, "result": parsed.value, "error": parsed.error, "input_shortened": cut}
                handle.write(json.dumps(row, ensure_ascii=False) + "\n")
            handle.flush()
    return len(todo)
