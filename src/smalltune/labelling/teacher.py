"""The teacher: any OpenAI-compatible chat endpoint, asked with pacing, retries and a JSON-mode fallback.

Requests are paced (teacher.requests_per_minute), retried with exponential backoff after 429, 5xx,
timeouts, lost connections and responses that are no chat completion (an HTML page with status 200, JSON
cut off, no `choices`; a Retry-After header is honoured), and asked in the strictest JSON mode the endpoint
accepts (json_schema, then json_object, then none). Tokens and cost are tallied as answers come.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import random
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import openai
from pydantic import ValidationError

from smalltune.config import TaskConfig, TeacherConfig
from smalltune.errors import ConfigError, SmalltuneError, validation_problems
from smalltune.tasks import TaskKind

FORMATS = ("json_schema", "json_object", "none")  # strictest first; each refusal moves one step right
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


def with_teacher(config: TaskConfig, **overrides: Any) -> TaskConfig:
    """The config with its `teacher:` section updated by the given (non-None) settings, validated."""
    base = config.teacher.model_dump() if config.teacher else {}
    given = {key: value for key, value in overrides.items() if value is not None}
    try:
        teacher = TeacherConfig.model_validate({**base, **given})
    except ValidationError as exc:
        problems = "; ".join(validation_problems(exc.errors(), prefix="teacher."))
        raise ConfigError(f"invalid teacher settings: {problems}") from exc
    return config.model_copy(update={"teacher": teacher})


def teacher_of(config: TaskConfig) -> TeacherConfig:
    if config.teacher is None or not config.teacher.model:
        raise ConfigError("no teacher model: add `teacher: {base_url: ..., model: ...}` to the task file or pass --model")
    return config.teacher


def api_key(teacher: TeacherConfig) -> str:
    if teacher.api_key_env is None:
        return "no-key"  # the client insists on one; servers that need none ignore it
    key = os.environ.get(teacher.api_key_env)
    if not key:
        raise ConfigError(f"teacher.api_key_env: ${teacher.api_key_env} is not set; export the key in it "
                          "(or set `api_key_env: null` for a server that needs no key)")
    return key


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


class BadResponse(Exception):
    """The endpoint answered, but not with a chat completion; the message says what came instead."""


def _answer_text(response: Any) -> str:
    """The text of a chat completion's first choice; BadResponse when the response is none."""
    if isinstance(response, str):  # the client hands back a body that is not JSON as text
        raise BadResponse(f"text instead of JSON: {response[:80]!r}")
    choices = getattr(response, "choices", None)
    if not choices:
        raise BadResponse("a JSON object without 'choices'")
    message = getattr(choices[0], "message", None)
    if message is None:
        raise BadResponse("a choice without a 'message'")
    content = getattr(message, "content", None)
    if content is not None and not isinstance(content, str):
        raise BadResponse(f"a message whose 'content' is {type(content).__name__}, not text")
    return content or ""


def _retry_reason(exc: Exception) -> str | None:
    """Why a failed request is worth repeating ("429", "503", "timeout", "connection", "bad response"), or None."""
    if isinstance(exc, BadResponse):
        return "bad response"
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

    def __init__(self, settings: TeacherConfig, task: TaskKind, tally: Tally):
        self.settings = settings
        self.tally = tally
        self.client = openai.AsyncOpenAI(base_url=settings.base_url, api_key=api_key(settings),
                                         timeout=settings.timeout, max_retries=0)
        self.schema = task.teacher_schema()
        self.format = FORMATS.index(settings.response_format) if self.schema else FORMATS.index("none")
        self.answered = 0
        self.pacer = _Pacer(settings.requests_per_minute)

    @property
    def response_format(self) -> str:
        return FORMATS[self.format]

    async def ask(self, messages: list[dict[str, str]]) -> str | None:
        """The answer text, or None when every retry failed.

        Raises Refused when the endpoint refuses this one request (or never answers it with a chat completion),
        TeacherError when it is unusable.
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
                text = _answer_text(response)
            except (openai.APIError, BadResponse) as exc:
                error = exc
            except json.JSONDecodeError as exc:
                error = BadResponse(f"JSON cut off or invalid ({exc.msg} at character {exc.pos})")
            else:
                self.answered += 1
                self._count(response.usage)
                return text
            reason = _retry_reason(error)
            if reason is None:
                self._refused(error, level)
                continue
            self.tally.retries[reason] += 1
            failures += 1
            if failures > self.settings.max_retries:
                last = f"{reason}: {error}" if isinstance(error, BadResponse) else reason
                if not self.answered:
                    raise TeacherError(f"no answer from {self.settings.base_url} after {failures} tries (last: {last}); "
                                       "check teacher.base_url (up to /v1) and that the server is up")
                if isinstance(error, BadResponse):
                    raise Refused(f"the teacher answered no chat completion after {failures} tries: {error}")
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
