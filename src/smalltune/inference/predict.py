"""`smalltune predict`: a file of records (or a folder of them, .html pages included; local or named by URL) in, one
JSON line per record out, resumable."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from smalltune.data.readers import SUFFIXES, data_path, local_path
from smalltune.data.remote import RemotePath
from smalltune.data.records import Invalid, Loaded, Record, load_inputs
from smalltune.errors import OutputError
from smalltune.inference.engine import Engine, OnBatch, load_engine
from smalltune.io import append_jsonl, json_line, read_appended, refuse_overwriting
from smalltune.runs import RunDir

PREDICTION_KEYS = ("id", "answer", "result", "error", "input_shortened")  # every row of an output; an invalid
# input record's row also has "where" (file:line)


def predict_file(
    run_dir: Path | RunDir,
    input_file: Path | str | RemotePath,
    out: Path,
    on_start: Callable[[int], None] | None = None,
    on_batch: OnBatch | None = None,
    engine: Engine | str | None = None,
) -> int:
    """Answer each record not yet in `out`, appending one line per record; returns how many were answered.

    `input_file` is a data file in the task's format, or a folder of them (`data.records.load_inputs`), such as
    a folder of .html/.htm pages (each one record, its id the file name), on disk or named by a URL string (s3://,
    gs://, abfs://, hf://, file://, ...: `data.remote`; the same ids). The input is read, and `out` checked,
    before the model is loaded: `out` must not be the input, nor a data file in the input folder, and must be
    new, empty or an earlier output of predict (see `io.read_appended`). An invalid input record gets an
    error line (its id, its `where`) instead of stopping the run. An answer chosen by scoring its candidates (classify)
    also gets `scores`: each candidate's probability. `engine` answers the records: an `Engine`, or
    the name of one to load the run's model into (see `load_engine`; None: the task file's infer.engine).
    """
    input_file, out = data_path(input_file).resolve(), Path(out)  # resolved: one file's error lines, however spelled
    local = local_path(input_file)
    if local is not None:
        refuse_overwriting([out], [local])
        if local.is_dir() and out.resolve().parent == local and out.suffix.lower() in SUFFIXES:
            raise OutputError(f"{out}: the output would be read as input, in the folder {input_file}; choose a path "
                              "outside it")
    config = engine.config if isinstance(engine, Engine) else RunDir.load(run_dir).config()
    loaded = load_inputs(input_file, config.data)
    todo, invalid = still_to_answer(loaded, read_appended(out, PREDICTION_KEYS))
    if on_start:
        on_start(len(todo))
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("a", encoding="utf-8") as handle:
        for row in invalid:  # an unreadable record gets its error line; the run goes on
            append_jsonl(handle, invalid_row(row))
        if not todo:
            return 0
        engine = engine if isinstance(engine, Engine) else load_engine(run_dir, engine)
        chunk = engine.config.infer.batch_size * 4
        for start in range(0, len(todo), chunk):
            handle.writelines(json_line(row) for row in answer_rows(engine, todo[start : start + chunk], on_batch))
            handle.flush()
    return len(todo)


def still_to_answer(loaded: Loaded, written: list[dict]) -> tuple[list[Record], list[Invalid]]:
    """The records no written row answers yet, and the invalid rows whose error line is not written yet."""
    answered = {row["id"] for row in written if "where" not in row}
    reported = {row["where"] for row in written if "where" in row}
    return ([r for r in loaded.records if r.id not in answered],
            [row for row in loaded.invalid if row.where not in reported])


def answer_rows(engine: Engine, records: list[Record], on_batch: OnBatch | None = None) -> list[dict]:
    """One output row per record, in order: its id, the answer text, the parsed value, the error (None when
    answered) and whether its input was shortened to fit; `scores` too when the answer was chosen by scoring."""
    generation = engine.generate(records, on_batch)
    parsed = engine.task.parse_all(generation.texts, records, generation.probabilities)
    rows = []
    for record, text, answer, cut, problem in zip(records, generation.texts, parsed, generation.truncated,
                                                  generation.problems):
        row = {"id": record.id, "answer": None if problem else text, "result": None if problem else answer.value,
               "error": problem or answer.error, "input_shortened": cut}
        if answer.probabilities is not None:
            row["scores"] = answer.probabilities
        rows.append(row)
    return rows


def invalid_row(row: Invalid) -> dict:
    """The output row of an input record that could not be read: no answer, the reason, and where it is."""
    return {"id": row.id, "answer": None, "result": None, "error": f"invalid record: {row.reason}",
            "input_shortened": False, "where": row.where}
