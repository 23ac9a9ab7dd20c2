"""A scripted OpenAI-compatible teacher for the `smalltune label` tests and benchmark.

Real HTTP on 127.0.0.1 (FastAPI served by uvicorn in a thread). `/v1/chat/completions` answers from a
table (input text -> correct answer); for chosen texts it misbehaves on purpose, one scripted behaviour
per request, in order, then answers correctly:

  "429", "500"      that HTTP error
  "slow"            the correct answer, after `slow_seconds` (longer than the client's timeout)
  "invalid"         text that is not JSON
  "ungrounded"      the correct JSON with one value changed so that it no longer occurs in the text
  "html"            status 200 with an HTML page (a proxy's error page, say)
  "truncated"       status 200 with the completion's JSON cut off halfway
  "no_choices"      status 200 with a JSON object that has no `choices`

The input text is the part of the first user message after the instruction (after the first blank line).
Every request is logged with what was asked and what was done.
"""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response


@dataclass
class Logged:
    """One request as the teacher saw it."""

    text: str
    behaviour: str
    feedback: bool  # the request carries an earlier answer and the reason it was rejected
    response_format: str | None
    messages: list[dict]
    at: float


@dataclass
class Script:
    """What the teacher knows and how it misbehaves."""

    answers: dict[str, str]
    faults: dict[str, list[str]] = field(default_factory=dict)
    refuse_formats: tuple[str, ...] = ()  # response_format types answered with 400
    api_key: str | None = None  # when set, other keys get 401
    delay: float = 0.0  # seconds before every answer
    slow_seconds: float = 1.0


def _ungrounded(answer: str) -> str:
    value = json.loads(answer)
    name = next(k for k, v in value.items() if v)
    return json.dumps({**value, name: value[name] + "某某"}, ensure_ascii=False)


def _completion(model: str, content: str, prompt_chars: int) -> dict:
    return {
        "id": "chatcmpl-test", "object": "chat.completion", "created": int(time.time()), "model": model,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": prompt_chars, "completion_tokens": len(content), "total_tokens": prompt_chars + len(content)},
    }


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": {"message": message, "type": "test", "code": status}}, status_code=status)


def create_teacher_app(script: Script, log: list[Logged]) -> FastAPI:
    """The teacher app: answers from script.answers, misbehaving as script.faults says."""
    app = FastAPI()
    pending = defaultdict(list, {text: list(behaviours) for text, behaviours in script.faults.items()})

    @app.post("/v1/chat/completions")
    async def chat(request: Request):
        body = await request.json()
        messages = body["messages"]
        first_user = next(m["content"] for m in messages if m["role"] == "user")
        text = first_user.split("\n\n", 1)[-1]
        response_format = (body.get("response_format") or {}).get("type")
        if script.api_key and request.headers.get("authorization") != f"Bearer {script.api_key}":
            behaviour = "401"
        elif response_format in script.refuse_formats:
            behaviour = "400"
        else:
            behaviour = pending[text].pop(0) if pending[text] else "ok"
        feedback = any(m["role"] == "assistant" for m in messages)
        log.append(Logged(text, behaviour, feedback, response_format, messages, time.monotonic()))
        if script.delay:
            await asyncio.sleep(script.delay)
        if behaviour in ("400", "401", "429", "500"):
            return _error(int(behaviour), f"scripted {behaviour} (response_format={response_format})")
        answer = script.answers.get(text, "我不知道。")
        if behaviour == "slow":
            await asyncio.sleep(script.slow_seconds)
        elif behaviour == "invalid":
            answer = "好的，" + answer.replace("{", "", 1)
        elif behaviour == "ungrounded":
            answer = _ungrounded(answer)
        prompt_chars = sum(len(m["content"]) for m in messages)
        completion = _completion(body["model"], answer, prompt_chars)
        if behaviour == "html":
            return HTMLResponse("<html><body><h1>502 Bad Gateway</h1></body></html>")
        if behaviour == "truncated":
            whole = json.dumps(completion, ensure_ascii=False)
            return Response(whole[: len(whole) // 2], media_type="application/json")
        if behaviour == "no_choices":
            return {key: value for key, value in completion.items() if key != "choices"}
        return completion

    return app


@contextmanager
def serving(app: FastAPI) -> Iterator[str]:
    """`app` served on a free port of 127.0.0.1 by uvicorn in a thread, for the length of the block; yields its /v1 URL."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", timeout_graceful_shutdown=1))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    try:
        while not server.started:
            if time.monotonic() > deadline or not thread.is_alive():
                raise RuntimeError("the test teacher did not start")
            time.sleep(0.01)
        yield f"http://127.0.0.1:{sock.getsockname()[1]}/v1"
    finally:
        server.should_exit = True
        thread.join(timeout=30)
        sock.close()


class TeacherServer:
    """The scripted teacher, served for the length of a `with` block; `url` and `log` are its address and requests."""

    def __init__(self, script: Script):
        self.script = script
        self.log: list[Logged] = []
        self._serving = serving(create_teacher_app(script, self.log))
        self.url = ""

    def __enter__(self) -> TeacherServer:
        self.url = self._serving.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self._serving.__exit__(*exc)

    def requests_for(self, text: str) -> list[Logged]:
        """The logged requests about one input text."""
        return [entry for entry in self.log if entry.text == text]
