"""`smalltune serve`: a run's model over HTTP, OpenAI-compatible, with micro-batching (`serving.batcher`).

Endpoints:
- `GET /health`: liveness, queue length and batching counters (no API key needed).
- `GET /v1/models`: the one model, named after the task.
- `POST /v1/chat/completions`: OpenAI chat completions (no streaming, one choice, greedy decoding;
  sampling options are accepted and ignored). The messages are read as the `messages` data format
  reads a record and prompted through the task's own messages, exactly as in training: the task's
  instruction before the last user turn, the task's system prompt when the request brings none.
- The task kind's own endpoint (`TaskKind.endpoint`: `POST /v1/extract`, `POST /v1/classify`): the `text`,
  or the visible text of a page sent as `html` (`data.html.page_text`, as training and predict read it; exactly
  one of the two), goes through the task's own prompt, and the answer through the task's parser, as in `smalltune predict`;
  a label chosen by scoring (infer.classify: score) comes with `scores`, each candidate's probability.

Every request waits in one bounded queue; a full queue answers 429 at once. On shutdown (Ctrl-C,
SIGTERM) the server stops accepting connections and answers every request it has accepted before it exits.
An input the model cannot be shown (or ground) is answered 400; a failure inside the server 500 with a
request id, its details only in the server's log.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
import secrets
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from fastapi import APIRouter, Depends, FastAPI, Header, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, model_validator
from starlette.exceptions import HTTPException as StarletteHTTPException

from smalltune.data.formats import Messages
from smalltune.data.html import page_text
from smalltune.data.records import Record, RecordProblem
from smalltune.errors import InputError, SmalltuneError, validation_problems
from smalltune.inference.engine import Engine, load_engine
from smalltune.registry import KINDS
from smalltune.serving.batcher import Answer, ClientGone, MicroBatcher, QueueFull

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ServeSettings:
    """How the server guards itself; the model settings come from the run's task.yaml."""

    max_queue: int = 256
    """Requests that may wait for the model; one more is answered 429."""
    max_body_bytes: int = 1 << 20
    """Largest request body; a larger one is answered 413."""
    api_key_env: str | None = None
    """Name of the environment variable holding the API key; None serves without a key."""
    batch_wait_s: float = 0.005
    """How long the worker waits for more requests to join a batch that is not full."""

    def api_key(self) -> str | None:
        """The key clients must send, read from the environment variable named by api_key_env."""
        if self.api_key_env is None:
            return None
        key = os.environ.get(self.api_key_env, "")
        if not key:
            raise SmalltuneError(
                f"--api-key-env {self.api_key_env}: that environment variable is empty or not set; "
                f"export {self.api_key_env}=<key> before starting the server"
            )
        return key


# --- request and response bodies ---------------------------------------------------------------


class _Open(BaseModel):
    model_config = ConfigDict(extra="allow")


class TextPart(BaseModel):
    type: Literal["text"]
    text: str


class ChatMessage(_Open):
    role: Literal["system", "user", "assistant"]
    content: str | list[TextPart]

    def text(self) -> str:
        return self.content if isinstance(self.content, str) else "".join(p.text for p in self.content)


class ChatRequest(_Open):
    """OpenAI chat completion request; sampling options (temperature, top_p, ...) are accepted and ignored."""

    model: str | None = None
    messages: list[ChatMessage] = Field(min_length=1)
    stream: bool = False
    n: int = 1


class TextRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    text: str | None = Field(None, min_length=1, description="The text to answer (or send `html`).")
    html: str | None = Field(None, min_length=1, description="A web page whose visible text is answered (or send `text`).")
    id: str | None = Field(None, description="Echoed back; a random id when absent.")
    candidates: list[str] | None = Field(None, min_length=1, description="classify: the labels to choose from "
                                         "(default: the task's).")

    @model_validator(mode="before")
    @classmethod
    def _text_or_html(cls, data: Any) -> Any:
        """Exactly one of `text` and `html` (a body that is no object is pydantic's to refuse)."""
        if isinstance(data, dict) and (data.get("text") is None) == (data.get("html") is None):
            given = "both" if data.get("text") is not None else "neither"
            raise ValueError("send the input as exactly one of 'text' (plain text) and 'html' (a web page, answered "
                             f"on its visible text); this request has {given}")
        return data


# --- the app -------------------------------------------------------------------------------------

Answerer = Callable[[Record, Request], Awaitable[Answer]]


def _error(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    """An error in OpenAI's shape, which the openai client reads."""
    kind = "invalid_request_error" if status < 500 else "server_error"
    return JSONResponse({"error": {"message": message, "type": kind, "code": status}}, status, headers=headers)


def _internal_error(exc: BaseException) -> HTTPException:
    """A 500 that names a request id and nothing of the failure, which is logged under that id."""
    request_id = uuid.uuid4().hex[:12]
    log.error("request %s failed", request_id, exc_info=exc)
    return HTTPException(500, f"internal error while answering (request id {request_id}; the server log has the "
                              "details)", headers={"X-Request-Id": request_id})


def _add_error_handlers(app: FastAPI) -> None:
    """HTTP errors and invalid bodies answered in OpenAI's error shape (invalid bodies as 400), any other failure
    as a generic 500."""

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return _error(exc.status_code, str(exc.detail), getattr(exc, "headers", None))

    @app.exception_handler(RequestValidationError)
    async def invalid_body(request: Request, exc: RequestValidationError) -> JSONResponse:
        return _error(400, f"invalid request: {'; '.join(validation_problems(exc.errors()))}")

    @app.exception_handler(Exception)
    async def failed(request: Request, exc: Exception) -> JSONResponse:
        return await http_error(request, _internal_error(exc))


def _key_check(key: str | None) -> Callable[..., Awaitable[None]]:
    """A dependency that answers 401 unless the request carries `Authorization: Bearer <key>` (the scheme in any
    case, RFC 7235)."""

    async def check(authorization: str | None = Header(None)) -> None:
        if key is None:
            return
        scheme, _, credentials = (authorization or "").strip().partition(" ")
        if scheme.lower() != "bearer" or not secrets.compare_digest(credentials.strip().encode(), key.encode()):
            raise HTTPException(401, "missing or wrong API key: send the header 'Authorization: Bearer <key>'",
                                headers={"WWW-Authenticate": "Bearer"})

    return check


def _queued(batcher: MicroBatcher) -> Answerer:
    """Answer a job through the batcher, turning its failures into HTTP errors."""

    async def answer(record: Record, request: Request) -> Answer:
        try:
            return await batcher.answer(record, request.is_disconnected)
        except QueueFull:
            raise HTTPException(429, f"server busy: {batcher.queue.maxsize} requests are already waiting; retry shortly",
                                headers={"Retry-After": "1"}) from None
        except ClientGone:
            raise HTTPException(499, "the client closed the request before its turn") from None
        except InputError as exc:  # the prompt cannot fit model.max_length, or is too long to ground
            raise HTTPException(400, str(exc)) from None
        except Exception as exc:
            raise _internal_error(exc) from None

    return answer


def chat_record(messages: list[dict[str, str]]) -> Record:
    """A chat request's messages as the record the task prompts (the same reading as the `messages` format):
    the last user turn is the input, the turns before it the history, a leading system message the system prompt.
    RecordProblem says what is wrong with the messages."""
    record_id = f"chatcmpl-{uuid.uuid4().hex}"
    fields = Messages().read({"messages": messages}, {}, require_output=False)
    if fields["output"] is not None:
        raise RecordProblem("the last message must be the user's")
    return Record(id=record_id, where=f"request {record_id}", **fields)


def _add_chat_route(api: APIRouter, engine: Engine, answer: Answerer) -> None:
    """POST /chat/completions: OpenAI's request and response shapes."""
    config, tokenizer = engine.config, engine.tokenizer

    @api.post("/chat/completions")
    async def chat_completions(body: ChatRequest, request: Request) -> dict:
        if body.stream:
            raise HTTPException(400, "streaming is not supported: send stream=false")
        if body.n != 1:
            raise HTTPException(400, "only n=1 is supported (decoding is greedy, every choice would be the same)")
        if body.model not in (None, config.name):
            raise HTTPException(404, f"model '{body.model}' is not served here; use '{config.name}' (see GET /v1/models)")
        try:
            record = chat_record([{"role": m.role, "content": m.text()} for m in body.messages])
        except RecordProblem as exc:
            raise HTTPException(400, str(exc)) from None
        reply = await answer(record, request)
        produced = len(tokenizer(reply.text, add_special_tokens=False)["input_ids"])
        return {
            "id": record.id, "object": "chat.completion", "created": int(time.time()), "model": config.name,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": reply.text},
                         "finish_reason": "length" if produced >= config.infer.max_new_tokens else "stop"}],
            "usage": {"prompt_tokens": reply.prompt_tokens, "completion_tokens": produced,
                      "total_tokens": reply.prompt_tokens + produced},
        }


def _add_task_route(api: APIRouter, engine: Engine, answer: Answerer) -> None:
    """The task kind's own endpoint (`TaskKind.endpoint`); the other kinds' endpoints answer 404 naming the right one."""
    config, task = engine.config, engine.task

    async def answer_text(body: TextRequest, request: Request) -> dict:
        if body.candidates and not task.takes_candidates:
            raise HTTPException(400, f"the {config.kind} task '{config.name}' takes no 'candidates'; send 'text' or "
                                     "'html' (and 'id')")
        text = body.text if body.html is None else await asyncio.to_thread(page_text, body.html)  # off the event loop
        if not text:
            raise HTTPException(400, "the page in 'html' has no visible text (only markup, script or style)")
        record_id = body.id or uuid.uuid4().hex
        record = Record(id=record_id, where=f"request {record_id}", input=text, output=None,
                        candidates=tuple(body.candidates or ()))
        problem = task.request_problem(record)
        if problem:
            raise HTTPException(400, problem)
        reply = await answer(record, request)
        parsed = task.parse(reply.text, record)
        body = {"id": record.id, task.result_key: parsed.value, "error": parsed.error, "answer": reply.text,
                "input_shortened": reply.shortened}
        if reply.probabilities is not None:  # chosen by scoring: each candidate's probability
            body["scores"] = reply.probabilities
        return body

    async def other_task() -> None:
        right = f"POST /v1{task.endpoint}" if task.endpoint else "POST /v1/chat/completions"
        raise HTTPException(404, f"this server runs the {config.kind} task '{config.name}'; use {right}")

    for kind in KINDS.names():
        path = KINDS.get(kind).endpoint
        if path and path != task.endpoint:
            api.add_api_route(path, other_task, methods=["POST"])
    if task.endpoint:
        api.add_api_route(task.endpoint, answer_text, methods=["POST"])


def create_app(engine: Engine, settings: ServeSettings | None = None) -> FastAPI:
    """The FastAPI app serving `engine`; its batching worker runs while the app's lifespan does."""
    settings = settings or ServeSettings()
    config = engine.config
    batcher = MicroBatcher(engine, settings.max_queue, settings.batch_wait_s)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        worker = asyncio.create_task(batcher.run())
        yield
        worker.cancel()
        batcher.close()

    app = FastAPI(title=f"smalltune: {config.name}", lifespan=lifespan, max_body_size=settings.max_body_bytes)
    _add_error_handlers(app)

    @app.get("/health")
    async def health() -> dict:
        stats = batcher.stats
        return {"status": "ok", "task": config.name, "kind": config.kind, "queued": batcher.queue.qsize(),
                "max_queue": settings.max_queue, "batch_size": batcher.max_batch, "engine_calls": stats.engine_calls,
                "requests_batched": stats.batched, "largest_batch": stats.largest_batch, "abandoned": stats.abandoned}

    api = APIRouter(prefix="/v1", dependencies=[Depends(_key_check(settings.api_key()))])

    @api.get("/models")
    async def models() -> dict:
        return {"object": "list", "data": [{"id": config.name, "object": "model", "created": 0, "owned_by": "smalltune"}]}

    answer = _queued(batcher)
    _add_chat_route(api, engine, answer)
    _add_task_route(api, engine, answer)
    app.include_router(api)
    return app


def serve(
    run_dir: Path,
    host: str = "127.0.0.1",
    port: int = 8000,
    settings: ServeSettings | None = None,
    log_level: str = "info",
    engine: str | None = None,
) -> None:
    """Load the run's fine-tuned model in `engine` (`load_engine`) and serve it until interrupted (Ctrl-C or SIGTERM)."""
    import uvicorn

    settings = settings or ServeSettings()
    settings.api_key()  # fail before the slow model load
    if settings.api_key_env is None and host not in ("127.0.0.1", "localhost", "::1"):
        log.warning("serving on %s without an API key: anyone who can reach it can use the model", host)
    app = create_app(load_engine(run_dir, engine), settings)
    uvicorn.run(app, host=host, port=port, log_level=log_level)
