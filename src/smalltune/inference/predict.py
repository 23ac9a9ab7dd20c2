"""`smalltune predict`: a file of records in, one JSON line per record out, resumable."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from smalltune.data.records import load_records
from smalltune.inference.engine import Engine, OnBatch, load_engine
from smalltune.io import append_jsonl, json_line, read_appended
from smalltune.runs import RunDir


def predict_file(
    run_dir: Path | RunDir,
    input_file: Path,
    out: Path,
    on_start: Callable[[int], None] | None = None,
    on_batch: OnBatch | None = None,
    engine: Engine | None = None,
) -> int:
    """Answer each record not yet in `out`, appending one line per record; returns how many were answered.

    Invalid input records get an error line each instead of stopping the run. An answer chosen by scoring its
    candidates (classify) also gets `scores`: each candidate's probability. `engine` answers them (default: the
    run's model in the transformers engine, see `load_engine`).
    """
    engine = engine or load_engine(run_dir)
    loaded = load_records(Path(input_file), engine.config.data, require_output=False)
    done = {row["id"] for row in read_appended(out)}
    todo = [r for r in loaded.records if r.id not in done]
    invalid = [p for p in loaded.problems if p.split(": ", 1)[0] not in done]
    if on_start:
        on_start(len(todo))
    chunk = engine.config.infer.batch_size * 4
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("a", encoding="utf-8") as handle:
        for problem in invalid:  # an unreadable record gets its error line (id = file:line); the run goes on
            where, _, why = problem.partition(": ")
            append_jsonl(handle, {"id": where, "answer": None, "result": None, "error": f"invalid record: {why}",
                                  "input_shortened": False})
        for start in range(0, len(todo), chunk):
            records = todo[start : start + chunk]
            generation = engine.generate(records, on_batch)
            parsed = engine.task.parse_all(generation.texts, records, generation.probabilities)
            for record, text, answer, cut in zip(records, generation.texts, parsed, generation.truncated):
                row = {"id": record.id, "answer": text, "result": answer.value, "error": answer.error,
                       "input_shortened": cut}
                if answer.probabilities is not None:
                    row["scores"] = answer.probabilities
                handle.write(json_line(row))
            handle.flush()
    return len(todo)
