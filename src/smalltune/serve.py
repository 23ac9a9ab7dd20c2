"""`smalltune serve`: a run's model over HTTP, OpenAI-compatible, with micro-batching.

Endpoints:
- `GET /health`: liveness, queue length and batching counters (no API key needed).
- `GET /v1/models`: the one model, named after the task.
- `POST /v1/chat/completions`: OpenAI chat completions (no streaming, one choice, greedy decoding;
  sampling options are accepted and ignored). The messages are rendered as given with the chat
  template; the task's system prompt is added when they bring none.
- `POST /v1/extract` (extract tasks) and `POST /v1/classify` (classify tasks): the text goes through
  the task's own prompt, and the answer through the task's parser, as in `smalltune predict`.

Every request waits in one bounded queue. A single worker takes up to `infer.batch_size` waiting
requests (after a few milliseconds for more to arrive) and answers them with one engine call in one
worker thread, so the engine never runs in two threads at once. A full queue answers 429 at once.
On shutdown (Ctrl-C, SIGTERM) the server stops accepting connections and answers every request it
has accepted before it exits.
"""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from fastapi import APIRouter, Depends, FastAPI, Header, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

from smalltune.data import Record
from smalltune.errors import SmalltuneError
from smalltune.formatting import render_prompt
from smalltune.infer import Engine

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


@dataclass(frozen=True)
class ChatJob:
    """Ready-made prompt token ids, answered as they are."""

    prompt: list[int]


@dataclass(frozen=True)
class Answer:
    """The model's text for one request, and whether its input was shortened to fit."""

    text: str
    shortened: bool = False


class QueueFull(Exception):
    """The request queue is full; the request was not accepted."""


class ClientGone(Exception):
    """The client disconnected while its request waited; it was never answered."""


@dataclass
class BatchStats:
    """Counters shown by /health."""

    engine_calls: int = 0
    batched: int = 0
    """Requests taken into a batch (answered or being answered)."""
    largest_batch: int = 0
    abandoned: int = 0
    """Requests skipped because their client disconnected while they waited."""


Job = Record | ChatJob


async def _still_here() -> bool:
    return False


@dataclass
class _Waiting:
    """A queued job, the future its request awaits, and how to ask whether its client has gone."""

    job: Job
    future: asyncio.Future[Answer]
    client_gone: Callable[[], Awaitable[bool]]


def _answer_jobs(engine: Engine, jobs: list[Job]) -> list[Answer]:
    """Answers in job order: records with the task's prompt, chat jobs as given (one engine call per kind)."""
    answers: dict[int, Answer] = {}
    records = [(i, job) for i, job in enumerate(jobs) if isinstance(job, Record)]
    chats = [(i, job) for i, job in enumerate(jobs) if isinstance(job, ChatJob)]
    if records:
        generation = engine.generate([job for _, job in records])
        for (i, _), text, cut in zip(records, generation.texts, generation.truncated):
            answers[i] = Answer(text, cut)
    if chats:
        generation = engine.generate_ids([job.prompt for _, job in chats])
        for (i, _), text in zip(chats, generation.texts):
            answers[i] = Answer(text)
    return [answers[i] for i in range(len(jobs))]


class MicroBatcher:
    """Collects concurrent requests from a bounded queue into batches for one engine thread."""

    def __init__(self, engine: Engine, max_queue: int, wait_s: float):
        self.engine = engine
        self.max_batch = engine.config.infer.batch_size
        self.wait_s = wait_s
        self.queue: asyncio.Queue[_Waiting] = asyncio.Queue(max_queue)
        self.thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="smalltune-engine")
        self.stats = BatchStats()

    async def answer(self, job: Job, client_gone: Callable[[], Awaitable[bool]] = _still_here) -> Answer:
        """Queue the job and wait for its answer; raises QueueFull at once when no place is left.

        `client_gone` is asked when the job's turn comes: a job whose client left is skipped (ClientGone).
        """
        future: asyncio.Future[Answer] = asyncio.get_running_loop().create_future()
        try:
            self.queue.put_nowait(_Waiting(job, future, client_gone))
        except asyncio.QueueFull:
            raise QueueFull from None
        return await future

    async def run(self) -> None:
        """Forever: take a batch, answer it in the engine thread, hand each request its answer."""
        loop = asyncio.get_running_loop()
        while True:
            batch = await self._present(await self._next_batch())
            if not batch:
                continue
            self.stats.batched += len(batch)
            self.stats.largest_batch = max(self.stats.largest_batch, len(batch))
            outcomes = await loop.run_in_executor(self.thread, self._answer_batch, [w.job for w in batch])
            for waiting, outcome in zip(batch, outcomes):
                if waiting.future.done():
                    continue
                if isinstance(outcome, Exception):
                    waiting.future.set_exception(outcome)
                else:
                    waiting.future.set_result(outcome)

    async def _present(self, taken: list[_Waiting]) -> list[_Waiting]:
        """The taken jobs whose clients still wait; the others are told ClientGone and skipped."""
        present = []
        for waiting in taken:
            if waiting.future.done():
                continue
            if await waiting.client_gone():
                self.stats.abandoned += 1
                waiting.future.set_exception(ClientGone())
                continue
            present.append(waiting)
        return present

    async def _next_batch(self) -> list[_Waiting]:
        """The first waiting request, plus those that arrive within wait_s, up to max_batch."""
        batch = [await self.queue.get()]
        self._drain(batch)
        if len(batch) < self.max_batch:
            await asyncio.sleep(self.wait_s)
            self._drain(batch)
        return batch

    def _drain(self, batch: list[_Waiting]) -> None:
        while len(batch) < self.max_batch and not self.queue.empty():
            batch.append(self.queue.get_nowait())

    def _answer_batch(self, jobs: list[Job]) -> list[Answer | Exception]:
        """One engine call for the batch; if it fails, each job alone, so one bad request fails only itself."""
        self.stats.engine_calls += 1
        try:
            return _answer_jobs(self.engine, jobs)
        except Exception as exc:
            if len(jobs) == 1:
                log.warning("the engine failed on a request: %s", exc)
                return [exc]
            return [self._answer_batch([job])[0] for job in jobs]

    def close(self) -> None:
        self.thread.shutdown(wait=True)


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

    text: str = Field(min_length=1, description="The text to answer.")
    id: str | None = Field(None, description="Echoed back; a random id when absent.")


class ClassifyRequest(TextRequest):
    candidates: list[str] | None = Field(None, min_length=1, description="Labels to choose from (default: the task's).")


# --- the app -------------------------------------------------------------------------------------

Answerer = Callable[[Job, Request], Awaitable[Answer]]
TASK_ENDPOINTS = {"extract": "/extract", "classify": "/classify"}


def _error(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    """An error in OpenAI's shape, which the openai client reads."""
    kind = "invalid_request_error" if status < 500 else "server_error"
    return JSONResponse({"error": {"message": message, "type": kind, "code": status}}, status, headers=headers)


def _add_error_handlers(app: FastAPI) -> None:
    """HTTP errors and invalid bodies answered in OpenAI's error shape (invalid bodies as 400)."""

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return _error(exc.status_code, str(exc.detail), getattr(exc, "headers", None))

    @app.exception_handler(RequestValidationError)
    async def invalid_body(request: Request, exc: RequestValidationError) -> JSONResponse:
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors())
        return _error(400, f"invalid request: {problems}")


def _key_check(key: str | None) -> Callable[..., Awaitable[None]]:
    """A dependency that answers 401 unless the request carries `Authorization: Bearer <key>`."""

    async def check(authorization: str | None = Header(None)) -> None:
        if key is None:
            return
        if not secrets.compare_digest((authorization or "").encode(), f"Bearer {key}".encode()):
            raise HTTPException(401, "missing or wrong API key: send the header 'Authorization: Bearer <key>'",
                                headers={"WWW-Authenticate": "Bearer"})

    return check


def _queued(batcher: MicroBatcher) -> Answerer:
    """Answer a job through the batcher, turning its failures into HTTP errors."""

    async def answer(job: Job, request: Request) -> Answer:
        try:
            return await batcher.answer(job, request.is_disconnected)
        except QueueFull:
            raise HTTPException(429, f"server busy: {batcher.queue.maxsize} requests are already waiting; retry shortly",
                                headers={"Retry-After": "1"}) from None
        except ClientGone:
            raise HTTPException(499, "the client closed the request before its turn") from None
        except ValueError as exc:  # the prompt cannot fit model.max_length
            raise HTTPException(400, str(exc)) from exc
        except Exception as exc:
            raise HTTPException(500, f"the model failed on this request: {exc}") from exc

    return answer


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
        if body.messages[-1].role != "user":
            raise HTTPException(400, "the last message must be the user's")
        messages = [{"role": m.role, "content": m.text()} for m in body.messages]
        if config.system and messages[0]["role"] != "system":
            messages.insert(0, {"role": "system", "content": config.system})
        text = render_prompt(tokenizer, messages, config.model.enable_thinking)
        prompt = tokenizer(text, add_special_tokens=False)["input_ids"]
        if len(prompt) > config.model.max_length:
            raise HTTPException(400, f"the prompt is {len(prompt)} tokens; this model takes at most "
                                     f"{config.model.max_length} (model.max_length); shorten the messages")
        reply = (await answer(ChatJob(prompt), request)).text
        produced = len(tokenizer(reply, add_special_tokens=False)["input_ids"])
        return {
            "id": f"chatcmpl-{uuid.uuid4().hex}", "object": "chat.completion", "created": int(time.time()),
            "model": config.name,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": reply},
                         "finish_reason": "length" if produced >= config.infer.max_new_tokens else "stop"}],
            "usage": {"prompt_tokens": len(prompt), "completion_tokens": produced, "total_tokens": len(prompt) + produced},
        }


def _add_task_routes(api: APIRouter, engine: Engine, answer: Answerer) -> None:
    """The task's own endpoint; the other task endpoints answer 404 naming the right one."""
    config, task = engine.config, engine.task

    async def answer_text(
        body: TextRequest, request: Request, candidates: list[str] | None = None
    ) -> tuple[Record, Answer]:
        record_id = body.id or uuid.uuid4().hex
        record = Record(id=record_id, where=f"request {record_id}", input=body.text, output=None,
                        candidates=tuple(candidates or ()))
        return record, await answer(record, request)

    async def extract(body: TextRequest, request: Request) -> dict:
        record, reply = await answer_text(body, request)
        parsed = task.parse(reply.text, record)
        return {"id": record.id, "result": parsed.value, "error": parsed.error, "answer": reply.text,
                "input_shortened": reply.shortened}

    async def classify(body: ClassifyRequest, request: Request) -> dict:
        if not body.candidates and not config.labels:
            raise HTTPException(400, f"task '{config.name}' has no fixed labels: send 'candidates', the labels to choose from")
        record, reply = await answer_text(body, request, body.candidates)
        parsed = task.parse(reply.text, record)
        return {"id": record.id, "label": parsed.value, "error": parsed.error, "answer": reply.text,
                "input_shortened": reply.shortened}

    async def other_task() -> None:
        right = f"POST /v1{TASK_ENDPOINTS[config.kind]}" if config.kind in TASK_ENDPOINTS else "POST /v1/chat/completions"
        raise HTTPException(404, f"this server runs the {config.kind} task '{config.name}'; use {right}")

    handlers = {"extract": extract, "classify": classify}
    for kind, path in TASK_ENDPOINTS.items():
        api.add_api_route(path, handlers[kind] if kind == config.kind else other_task, methods=["POST"])


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
    _add_task_routes(api, engine, answer)
    app.include_router(api)
    return app


def serve(
    run_dir: Path,
    host: str = "127.0.0.1",
    port: int = 8000,
    settings: ServeSettings | None = None,
    log_level: str = "info",
) -> None:
    """Load the run's fine-tuned model and serve it until interrupted (Ctrl-C or SIGTERM)."""
    import uvicorn

    settings = settings or ServeSettings()
    settings.api_key()  # fail before the slow model load
    if settings.api_key_env is None and host not in ("127.0.0.1", "localhost", "::1"):
        log.warning("serving on %s without an API key: anyone who can reach it can use the model", host)
    app = create_app(Engine.from_run(Path(run_dir), merge=True), settings)
    uvicorn.run(app, host=host, port=port, log_level=log_level)
