"""Micro-batching: concurrent requests collected from one bounded queue into batches for one engine thread.

A single worker takes up to `infer.batch_size` waiting requests (after a few milliseconds for more to
arrive) and answers them with one engine call in one worker thread, so the engine never runs in two
threads at once. A full queue refuses at once (`QueueFull`); a request whose client left before its turn
is skipped, never computed; a request the engine cannot answer as given (`Generation.problems`) fails
alone with an `InputError`.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from smalltune.data.records import Record
from smalltune.errors import InputError
from smalltune.inference.engine import Engine

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Answer:
    """The model's text for one request, its prompt's length, whether its input was shortened to fit, and each
    candidate's probability when the answer was chosen by scoring."""

    text: str
    prompt_tokens: int
    shortened: bool = False
    probabilities: dict[str, float] | None = None


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


async def _still_here() -> bool:
    return False


@dataclass
class _Waiting:
    """A queued record, the future its request awaits, and how to ask whether its client has gone."""

    record: Record
    future: asyncio.Future[Answer]
    client_gone: Callable[[], Awaitable[bool]]


class MicroBatcher:
    """Collects concurrent requests from a bounded queue into batches for one engine thread."""

    def __init__(self, engine: Engine, max_queue: int, wait_s: float):
        self.engine = engine
        self.max_batch = engine.config.infer.batch_size
        self.wait_s = wait_s
        self.queue: asyncio.Queue[_Waiting] = asyncio.Queue(max_queue)
        self.thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="smalltune-engine")
        self.stats = BatchStats()

    async def answer(self, record: Record, client_gone: Callable[[], Awaitable[bool]] = _still_here) -> Answer:
        """Queue the record and wait for its answer; raises QueueFull at once when no place is left.

        `client_gone` is asked when the record's turn comes: a record whose client left is skipped (ClientGone).
        """
        future: asyncio.Future[Answer] = asyncio.get_running_loop().create_future()
        try:
            self.queue.put_nowait(_Waiting(record, future, client_gone))
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
            outcomes = await loop.run_in_executor(self.thread, self._answer_batch, [w.record for w in batch])
            for waiting, outcome in zip(batch, outcomes):
                if waiting.future.done():
                    continue
                if isinstance(outcome, Exception):
                    waiting.future.set_exception(outcome)
                else:
                    waiting.future.set_result(outcome)

    async def _present(self, taken: list[_Waiting]) -> list[_Waiting]:
        """The taken records whose clients still wait; the others are told ClientGone and skipped."""
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

    def _answer_batch(self, records: list[Record]) -> list[Answer | Exception]:
        """One engine call for the batch; if it fails, each record alone, so one bad request fails only itself."""
        self.stats.engine_calls += 1
        try:
            generation = self.engine.generate(records)
            scored = generation.probabilities or [None] * len(records)
            return [InputError(problem) if problem else Answer(text, tokens, cut, probabilities)
                    for text, tokens, cut, problem, probabilities in zip(generation.texts, generation.prompt_tokens,
                                                                         generation.truncated, generation.problems, scored)]
        except Exception as exc:
            if len(records) == 1:
                log.warning("the engine failed on a request: %s", exc)
                return [exc]
            return [self._answer_batch([record])[0] for record in records]

    def close(self) -> None:
        self.thread.shutdown(wait=True)
