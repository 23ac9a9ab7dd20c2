"""`smalltune label`: raw texts in, labelled training records out, answered by a teacher model.

The teacher (`labelling.teacher`) is asked the prompt the student will be asked (`TaskKind.teacher_messages`),
and its answer is checked, not trusted: `TaskKind.teacher_answer` parses it and checks it as training data
is checked (for extract, also grounded: a value must occur in the text). A bad answer goes back to the teacher
once with the reason; if the second answer is bad too, the record goes to the rejects file with it. Labelled
records are written in the task's own data format (`data.formats`), so the same task file trains on them.

Every answer received is appended to a cache (keyed by record id and prompt hash) before it is used,
and every record to the output or the rejects file as soon as it is decided, so a run killed at any
point and started again asks nothing twice and ends with each record exactly once.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
from collections import Counter
from collections.abc import Callable, Coroutine, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from smalltune.config import TaskConfig
from smalltune.data.records import Record, load_records, record_row
from smalltune.errors import ConfigError, DataError
from smalltune.io import append_jsonl, atomic_write_json, read_appended, refuse_overwriting
from smalltune.labelling.redact import Redaction
from smalltune.labelling.select import choose
from smalltune.labelling.teacher import Refused, Tally, Teacher, api_key, teacher_of
from smalltune.registry import FORMATS
from smalltune.tasks import build_task

FEEDBACK = "你的回答不合格：{reason}。请按要求重新回答，只输出答案。"
REJECT_KEYS = ("id", "where", "input", "answers", "reasons", "reason")  # every row of a rejects file
CACHE_KEYS = ("key", "id", "answer")  # every row of a request cache


@dataclass(frozen=True)
class Outputs:
    """The files of one labelled output: the records, the rejects, the request cache and the summary."""

    labelled: Path

    @property
    def rejects(self) -> Path:
        return self.labelled.with_name(f"{self.labelled.stem}.rejects.jsonl")

    @property
    def cache(self) -> Path:
        return self.labelled.with_name(f"{self.labelled.stem}.cache.jsonl")

    @property
    def summary(self) -> Path:
        return self.labelled.with_name(f"{self.labelled.stem}.summary.json")

    @property
    def holdout(self) -> Outputs:
        return Outputs(self.labelled.with_name(f"{self.labelled.stem}.holdout.jsonl"))

    @property
    def files(self) -> tuple[Path, ...]:
        """Every file written for this output."""
        return self.labelled, self.rejects, self.cache, self.summary


def labelled_keys(config: TaskConfig) -> tuple[str, str]:
    """The keys every labelled row holds: the data format's id key (written first) and label_status."""
    return FORMATS.get(config.data.format)().id_key(config.data.columns), "label_status"


def cache_key(record_id: str, model: str, messages: list[dict[str, str]]) -> str:
    """Record id + hash of what is sent: the same question is never paid for twice."""
    prompt = json.dumps([model, messages], ensure_ascii=False, sort_keys=True)
    return f"{record_id}:{hashlib.sha256(prompt.encode('utf-8')).hexdigest()[:24]}"


class _Labeller:
    """Labels records into one Outputs, recording each answer in the cache and each decision in a file."""

    def __init__(self, config: TaskConfig, outputs: Outputs, redact: bool, tally: Tally,
                 on_record: Callable[[Tally], None] | None):
        self.task = build_task(config)
        self.settings = teacher_of(config)
        self.outputs, self.redact, self.tally, self.on_record = outputs, redact, tally, on_record
        self.cache = {row["key"]: row for row in read_appended(outputs.cache, CACHE_KEYS)}

    async def run(self, records: list[Record]) -> str:
        """Label every record; returns the response format the endpoint accepted."""
        self.outputs.labelled.parent.mkdir(parents=True, exist_ok=True)
        self.teacher = Teacher(self.settings, self.task, self.tally)
        queue: Iterator[Record] = iter(records)
        with (self.outputs.labelled.open("a", encoding="utf-8") as self.labelled,
              self.outputs.rejects.open("a", encoding="utf-8") as self.rejects,
              self.outputs.cache.open("a", encoding="utf-8") as self.cache_file):
            async with self.teacher.client:
                workers = [self._work(queue) for _ in range(min(self.settings.concurrency, max(len(records), 1)))]
                await asyncio.gather(*workers)
        return self.teacher.response_format

    async def _work(self, queue: Iterator[Record]) -> None:
        for record in queue:
            await self._label(record)
            if self.on_record:
                self.on_record(self.tally)

    async def _answer(self, record: Record, messages: list[dict[str, str]]) -> str | None:
        """The teacher's answer from the cache, or asked now and cached before it is used."""
        key = cache_key(record.id, self.settings.model, messages)
        if key in self.cache:
            self.tally.from_cache += 1
            return self.cache[key]["answer"]
        answer = await self.teacher.ask(messages)
        if answer is not None:
            self.cache[key] = {"key": key, "id": record.id, "answer": answer}
            append_jsonl(self.cache_file, self.cache[key])
        return answer

    async def _label(self, record: Record) -> None:
        """Ask, check, feed the reason back once, and write the record to the output or the rejects."""
        redaction = Redaction() if self.redact else None
        messages = self.task.teacher_messages(_masked(record, redaction) if redaction else record)
        answers: list[str] = []
        reasons: list[str] = []
        for _attempt in range(2):
            try:
                answer = await self._answer(record, messages)
            except Refused as exc:
                reasons.append(str(exc))
                break
            if answer is None:  # no answer after all retries: the record stays unlabelled for the next run
                return
            answers.append(redaction.restore(answer) if redaction else answer)
            result = self.task.teacher_answer(answers[-1], record)
            if result.ok:
                status = "repaired" if reasons else "accepted"
                row = record_row(replace(record, output=result.value), self.task.config.data)
                append_jsonl(self.labelled, {**row, "label_status": status})
                setattr(self.tally, status, getattr(self.tally, status) + 1)
                return
            reasons.append(result.error)
            feedback = FEEDBACK.format(reason=redaction.mask(result.error) if redaction else result.error)
            messages = [*messages, {"role": "assistant", "content": answer}, {"role": "user", "content": feedback}]
        append_jsonl(self.rejects, {"id": record.id, "where": record.where, "input": record.input,
                               "answers": answers, "reasons": reasons, "reason": reasons[-1]})
        self.tally.rejected += 1


def _masked(record: Record, redaction: Redaction) -> Record:
    """The record as it leaves the machine: personal data in every text replaced by placeholders."""
    def mask(text: str | None) -> str | None:
        return None if text is None else redaction.mask(text)

    history = tuple({**turn, "content": redaction.mask(turn["content"])} for turn in record.history)
    return replace(record, input=redaction.mask(record.input), instruction=mask(record.instruction),
                   system=mask(record.system), history=history)


def _run(coroutine: Coroutine) -> Any:
    """Run a coroutine to the end, also from inside a running event loop (a notebook)."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coroutine)
    with ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, coroutine).result()


def label_records(config: TaskConfig, records: list[Record], out: Path, *, redact: bool = False,
                  on_start: Callable[[Tally], None] | None = None,
                  on_record: Callable[[Tally], None] | None = None) -> dict:
    """Label the records not yet decided in `out` (appending), then write and return the summary."""
    outputs = Outputs(Path(out))
    started = time.perf_counter()
    selected = {r.id for r in records}
    keys = labelled_keys(config)
    decided = ({row[keys[0]] for row in read_appended(outputs.labelled, keys)}
               | {row["id"] for row in read_appended(outputs.rejects, REJECT_KEYS)})
    todo = [r for r in records if r.id not in decided]
    tally = Tally(records=len(records), done_before=len(selected & decided))
    if on_start:
        on_start(tally)
    response_format = _run(_Labeller(config, outputs, redact, tally, on_record).run(todo)) if todo else "-"
    summary = summarise(config, outputs, selected, tally, response_format)
    summary["seconds"] = round(time.perf_counter() - started, 2)
    atomic_write_json(outputs.summary, summary)
    return summary


def summarise(config: TaskConfig, outputs: Outputs, selected: set[str], tally: Tally, response_format: str) -> dict:
    """Counts over the whole output (all runs) and what this run spent."""
    teacher, keys = teacher_of(config), labelled_keys(config)
    statuses = Counter(row["label_status"] for row in read_appended(outputs.labelled, keys) if row[keys[0]] in selected)
    rejected = sum(row["id"] in selected for row in read_appended(outputs.rejects, REJECT_KEYS))
    accepted, repaired = statuses["accepted"], statuses["repaired"]
    return {
        "output": str(outputs.labelled), "rejects": str(outputs.rejects), "records": len(selected),
        "accepted": accepted, "repaired": repaired, "rejected": rejected,
        "unlabelled": len(selected) - accepted - repaired - rejected,
        "teacher": {"base_url": teacher.base_url, "model": teacher.model, "response_format": response_format},
        "this_run": {"requests": tally.requests, "from_cache": tally.from_cache, "retries": dict(tally.retries),
                     "input_tokens": tally.input_tokens, "output_tokens": tally.output_tokens,
                     "cost": round(tally.cost, 6), "currency": teacher.currency},
    }


def label_file(config: TaskConfig, input_file: Path, out: Path, *, limit: int | None = None, holdout: int = 0,
               redact: bool = False, seed: int | None = None,
               on_start: Callable[[Tally], None] | None = None,
               on_record: Callable[[Tally], None] | None = None) -> list[dict]:
    """Label a raw file's records (or `limit` representative ones, plus `holdout` into a second file).

    Returns one summary per output file written (the labelled file, then the holdout file if any).
    """
    api_key(teacher_of(config))
    if Path(out).suffix != ".jsonl":
        raise ConfigError(f"--out {out}: the labelled output is JSON Lines; give it a .jsonl name")
    outputs = Outputs(Path(out))
    refuse_overwriting([*outputs.files, *(outputs.holdout.files if holdout else ())], [input_file])
    loaded = load_records(Path(input_file), config.data, require_output=False)
    if loaded.problems:
        raise DataError(f"invalid raw records in {input_file}:\n" + "\n".join(loaded.problems))
    chosen, held = choose(loaded.records, limit, holdout, config.data.split_seed if seed is None else seed)
    summaries = [label_records(config, chosen, out, redact=redact, on_start=on_start, on_record=on_record)]
    if held:
        summaries.append(label_records(config, held, outputs.holdout.labelled, redact=redact,
                                       on_start=on_start, on_record=on_record))
    return summaries
