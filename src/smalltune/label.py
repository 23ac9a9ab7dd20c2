"""`smalltune label`: raw texts in, labelled training records out, answered by a teacher model.

The teacher is any OpenAI-compatible chat endpoint. It is asked the prompt the student will be asked
(`task.messages`), and its answer is checked, not trusted: the task's own parser and record check, plus
grounding (an extractive field's value must occur in the text). A bad answer goes back to the teacher
once with the reason; if the second answer is bad too, the record goes to the rejects file with it.

Every answer received is appended to a cache (keyed by record id and prompt hash) before it is used,
and every record to the output or the rejects file as soon as it is decided, so a run killed at any
point and started again asks nothing twice and ends with each record exactly once.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import os
import random
import time
from collections import Counter
from collections.abc import Callable, Coroutine, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, TextIO

import openai
from pydantic import ValidationError

from smalltune.config import TaskConfig, TeacherConfig
from smalltune.data import Record, load_records
from smalltune.errors import ConfigError, DataError, SmalltuneError
from smalltune.io import atomic_write_json, read_appended
from smalltune.redact import Redaction
from smalltune.sample import choose
from smalltune.tasks import Parsed, TaskKind, build_task

FORMATS = ("json_schema", "json_object", "none")  # strictest first; each refusal moves one step right
FEEDBACK = "你的回答不合格：{reason}。请按要求重新回答，只输出答案。"
log = logging.getLogger(__name__)


class TeacherError(SmalltuneError):
    """The teacher endpoint cannot be used at all (wrong URL, key or model name)."""


@dataclass
class Tally:
    """What a labelling run decided and spent; shown live and saved in the summary."""

    records: int = 0  # selected for this output file
    done_before: int = 0  # decided by an earlier run
    accepted: int = 0
    repaired: int = 0  # valid only after the reason was fed back
    rejected: int = 0
    requests: int = 0
    from_cache: int = 0
    retries: Counter = field(default_factory=Counter)  # "429", "500", "timeout", "connection"
    input_tokens: int = 0
    output_tokens: int = 0
    cost: float = 0.0

    @property
    def decided(self) -> int:
        return self.done_before + self.accepted + self.repaired + self.rejected


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


# ---------------------------------------------------------------- settings


def with_teacher(config: TaskConfig, **overrides: Any) -> TaskConfig:
    """The config with its `teacher:` section updated by the given (non-None) settings, validated."""
    base = config.teacher.model_dump() if config.teacher else {}
    given = {key: value for key, value in overrides.items() if value is not None}
    try:
        teacher = TeacherConfig.model_validate({**base, **given})
    except ValidationError as exc:
        problems = "; ".join(f"teacher.{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        raise ConfigError(f"invalid teacher settings: {problems}") from exc
    return config.model_copy(update={"teacher": teacher})


def _teacher_of(config: TaskConfig) -> TeacherConfig:
    if config.teacher is None or not config.teacher.model:
        raise ConfigError("no teacher model: add `teacher: {base_url: ..., model: ...}` to the task file or pass --model")
    return config.teacher


def _api_key(teacher: TeacherConfig) -> str:
    if teacher.api_key_env is None:
        return "no-key"  # the client insists on one; servers that need none ignore it
    key = os.environ.get(teacher.api_key_env)
    if not key:
        raise ConfigError(f"teacher.api_key_env: ${teacher.api_key_env} is not set; export the key in it "
                          "(or set `api_key_env: null` for a server that needs no key)")
    return key


# ---------------------------------------------------------------- prompts and checks


def teacher_messages(task: TaskKind, record: Record) -> list[dict[str, str]]:
    """The student's messages; when the user turn lacks the field or label list, the task's own list is added."""
    messages = task.messages(record)
    if task.config.kind == "extract":
        names = list(task.config.fields)
    elif task.config.kind == "classify":
        names = task.candidates(record)
    else:
        return messages
    content = messages[-1]["content"]
    if any(name not in content for name in names):
        messages[-1] = {**messages[-1], "content": f"{content}\n\n{task.default_instruction(record)}"}
    return messages


def json_schema(config: TaskConfig) -> dict:
    """The OpenAI `response_format` asking for exactly the task's fields, as strings."""
    properties = {name: {"type": "string", "description": spec.description} for name, spec in config.fields.items()}
    schema = {"type": "object", "properties": properties, "required": list(config.fields), "additionalProperties": False}
    return {"type": "json_schema", "json_schema": {"name": "fields", "strict": True, "schema": schema}}


def check_answer(task: TaskKind, record: Record, text: str) -> Parsed:
    """The answer as a training output, or why it cannot be one: parsed, checked like training data, grounded."""
    parsed = task.parse(text, record)
    if not parsed.ok:
        return parsed
    problem = task.check(replace(record, output=parsed.value))
    if problem:
        return Parsed(None, problem.replace("'output'", "the answer"))
    if task.config.kind != "extract":
        return parsed
    # verbatim, not merely equal after normalising: grounded constrained decoding can only copy exact text
    value = {name: parsed.value[name] for name in task.config.fields}
    ungrounded = [name for name, spec in task.config.fields.items()
                  if spec.extractive and value[name] and value[name] not in record.input]
    if ungrounded:
        listed = ", ".join(f"'{name}' = {value[name]!r}" for name in ungrounded)
        return Parsed(None, f"{listed} not found in the text; copy values verbatim from the text or leave them empty")
    return Parsed(value)


def training_row(task: TaskKind, record: Record, output: Any, status: str) -> dict:
    """The labelled record in the task's data format (the same task file trains on it), its other columns kept."""
    data = task.config.data
    if data.format == "messages":
        head = [{"role": "system", "content": record.system}] if record.system else []
        turns = [*head, *record.history, {"role": "user", "content": record.input},
                 {"role": "assistant", "content": task.answer(replace(record, output=output))}]
        row = {"id": record.id, "messages": turns}
    elif data.format == "columns":
        names = {"id": "id", "input": "input", "output": "output", **data.columns}
        row = {names["id"]: record.id, names["input"]: record.input, names["output"]: output}
        for role in ("instruction", "system"):
            if role in names and getattr(record, role) is not None:
                row[names[role]] = getattr(record, role)
        if "candidates" in names:
            row[names["candidates"]] = list(record.candidates)
    else:
        pairs = [[record.history[i]["content"], record.history[i + 1]["content"]] for i in range(0, len(record.history), 2)]
        row = {"id": record.id, "instruction": record.instruction, "input": record.input, "output": output,
               "system": record.system, "history": pairs or None, "candidates": list(record.candidates) or None}
        row = {key: value for key, value in row.items() if value is not None}
    return {**record.extra, **row, "label_status": status}


# ---------------------------------------------------------------- append-only files


def _append(handle: TextIO, row: dict) -> None:
    handle.write(json.dumps(row, ensure_ascii=False) + "\n")
    handle.flush()


def cache_key(record_id: str, model: str, messages: list[dict[str, str]]) -> str:
    """Record id + hash of what is sent: the same question is never paid for twice."""
    prompt = json.dumps([model, messages], ensure_ascii=False, sort_keys=True)
    return f"{record_id}:{hashlib.sha256(prompt.encode('utf-8')).hexdigest()[:24]}"


# ---------------------------------------------------------------- the endpoint


class _Pacer:
    """Spaces request starts at least 60/requests_per_minute seconds apart."""

    def __init__(self, per_minute: float | None):
        self.interval = 60.0 / per_minute if per_minute else 0.0
        self.next_at = 0.0

    async def wait(self) -> None:
        now = time.monotonic()
        start = max(now, self.next_at)
        self.next_at = start + self.interval
        if start > now:
            await asyncio.sleep(start - now)


def _retry_reason(exc: Exception) -> str | None:
    """Why a failed request is worth repeating ("429", "503", "timeout", "connection"), or None."""
    if isinstance(exc, openai.APITimeoutError):
        return "timeout"
    if isinstance(exc, openai.APIConnectionError):
        return "connection"
    if isinstance(exc, openai.APIStatusError) and (exc.status_code in (408, 409, 429) or exc.status_code >= 500):
        return str(exc.status_code)
    return None


def _retry_after(exc: Exception) -> float | None:
    response = getattr(exc, "response", None)
    try:
        return float(response.headers["retry-after"]) if response is not None else None
    except (KeyError, ValueError):
        return None


class Refused(Exception):
    """The endpoint refused one request for good (a 4xx other than 401/403/404): the record is rejected."""


class Teacher:
    """One OpenAI-compatible endpoint: pacing, retries with exponential backoff, JSON-mode fallback, the tally."""

    def __init__(self, settings: TeacherConfig, config: TaskConfig, tally: Tally):
        self.settings = settings
        self.tally = tally
        self.client = openai.AsyncOpenAI(base_url=settings.base_url, api_key=_api_key(settings),
                                         timeout=settings.timeout, max_retries=0)
        self.schema = json_schema(config) if config.kind == "extract" else None
        self.format = FORMATS.index(settings.response_format) if self.schema else FORMATS.index("none")
        self.answered = 0
        self.pacer = _Pacer(settings.requests_per_minute)

    @property
    def response_format(self) -> str:
        return FORMATS[self.format]

    async def ask(self, messages: list[dict[str, str]]) -> str | None:
        """The answer text, or None when every retry failed.

        Raises Refused when the endpoint refuses this one request, TeacherError when it is unusable.
        """
        failures = 0
        while True:
            level = self.format
            await self.pacer.wait()
            self.tally.requests += 1
            try:
                response = await self.client.chat.completions.create(
                    model=self.settings.model, messages=messages, temperature=self.settings.temperature,
                    max_tokens=self.settings.max_tokens, response_format=self._response_format(level))
            except openai.APIError as exc:
                error = exc
            else:
                self.answered += 1
                self._count(response.usage)
                return response.choices[0].message.content or ""
            reason = _retry_reason(error)
            if reason is None:
                self._refused(error, level)
                continue
            self.tally.retries[reason] += 1
            failures += 1
            if failures > self.settings.max_retries:
                if not self.answered:
                    raise TeacherError(f"no answer from {self.settings.base_url} after {failures} tries (last: {reason}); "
                                       "check teacher.base_url and that the server is up")
                return None
            delay = _retry_after(error) or self.settings.backoff * 2 ** (failures - 1)
            await asyncio.sleep(min(delay, self.settings.max_backoff) * random.uniform(0.8, 1.0))

    def _response_format(self, level: int) -> Any:
        return {"json_schema": self.schema, "json_object": {"type": "json_object"}, "none": openai.omit}[FORMATS[level]]

    def _refused(self, error: openai.APIError, level: int) -> None:
        """After a refusal: ask with a weaker JSON mode next, or raise TeacherError (unusable) or Refused (this record)."""
        status = getattr(error, "status_code", None)
        if status in (400, 422) and FORMATS[level] != "none":
            if self.format == level:
                log.warning("%s refused response_format=%s (%s); asking with %s from now on",
                            self.settings.base_url, FORMATS[level], status, FORMATS[level + 1])
                self.format = level + 1
            return
        hints = {401: f"check the key in ${self.settings.api_key_env}", 403: f"check the key in ${self.settings.api_key_env}",
                 404: "check teacher.base_url (up to /v1) and teacher.model"}
        if status in hints:
            raise TeacherError(f"{self.settings.base_url} answered {status} ({error.message}): {hints[status]}")
        raise Refused(f"the teacher refused the request: {status} {error.message}")

    def _count(self, usage: Any) -> None:
        if usage is None:
            return
        self.tally.input_tokens += usage.prompt_tokens or 0
        self.tally.output_tokens += usage.completion_tokens or 0
        self.tally.cost = (self.tally.input_tokens * self.settings.price_input
                           + self.tally.output_tokens * self.settings.price_output) / 1e6


# ---------------------------------------------------------------- one output file


class _Labeller:
    """Labels records into one Outputs, recording each answer in the cache and each decision in a file."""

    def __init__(self, config: TaskConfig, outputs: Outputs, redact: bool, tally: Tally,
                 on_record: Callable[[Tally], None] | None):
        self.task = build_task(config)
        self.settings = _teacher_of(config)
        self.outputs, self.redact, self.tally, self.on_record = outputs, redact, tally, on_record
        self.cache = {row["key"]: row for row in read_appended(outputs.cache)}

    async def run(self, records: list[Record]) -> str:
        """Label every record; returns the response format the endpoint accepted."""
        self.outputs.labelled.parent.mkdir(parents=True, exist_ok=True)
        self.teacher = Teacher(self.settings, self.task.config, self.tally)
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
            _append(self.cache_file, self.cache[key])
        return answer

    async def _label(self, record: Record) -> None:
        """Ask, check, feed the reason back once, and write the record to the output or the rejects."""
        redaction = Redaction() if self.redact else None
        messages = teacher_messages(self.task, _masked(record, redaction) if redaction else record)
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
            result = check_answer(self.task, record, answers[-1])
            if result.ok:
                status = "repaired" if reasons else "accepted"
                _append(self.labelled, training_row(self.task, record, result.value, status))
                setattr(self.tally, status, getattr(self.tally, status) + 1)
                return
            reasons.append(result.error)
            feedback = FEEDBACK.format(reason=redaction.mask(result.error) if redaction else result.error)
            messages = [*messages, {"role": "assistant", "content": answer}, {"role": "user", "content": feedback}]
        _append(self.rejects, {"id": record.id, "where": record.where, "input": record.input,
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
    decided = {row["id"] for row in read_appended(outputs.labelled) + read_appended(outputs.rejects)}
    todo = [r for r in records if r.id not in decided]
    tally = Tally(records=len(records), done_before=len(selected & decided))
    if on_start:
        on_start(tally)
    response_format = _run(_Labeller(config, outputs, redact, tally, on_record).run(todo)) if todo else "-"
    summary = summarise(outputs, selected, tally, _teacher_of(config), response_format)
    summary["seconds"] = round(time.perf_counter() - started, 2)
    atomic_write_json(outputs.summary, summary)
    return summary


def summarise(outputs: Outputs, selected: set[str], tally: Tally, teacher: TeacherConfig, response_format: str) -> dict:
    """Counts over the whole output (all runs) and what this run spent."""
    statuses = Counter(row.get("label_status") for row in read_appended(outputs.labelled) if row["id"] in selected)
    rejected = sum(row["id"] in selected for row in read_appended(outputs.rejects))
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
    _api_key(_teacher_of(config))
    if Path(out).suffix != ".jsonl":
        raise ConfigError(f"--out {out}: the labelled output is JSON Lines; give it a .jsonl name")
    loaded = load_records(Path(input_file), config.data, require_output=False)
    if loaded.problems:
        raise DataError(f"invalid raw records in {input_file}:\n" + "\n".join(loaded.problems))
    chosen, held = choose(loaded.records, limit, holdout, config.data.split_seed if seed is None else seed)
    summaries = [label_records(config, chosen, out, redact=redact, on_start=on_start, on_record=on_record)]
    if held:
        summaries.append(label_records(config, held, Outputs(Path(out)).holdout.labelled, redact=redact,
                                       on_start=on_start, on_record=on_record))
    return summaries
