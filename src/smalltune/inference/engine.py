"""The engine seam: what every inference engine does, `Generation`, and the one way to build an engine.

Every engine gets its prompts from `formatting.prompts_for` (the rendering and shortening training used)
and its answer grammars from the task kind, decodes greedily and stops at the template's end-of-turn
token. An engine implements only how to answer ready prompt ids (`_answer`), how to switch the adapter off
(`untuned`) and how to fold it in (`merged`), and, to answer by scoring, how to score candidate answers after
their prompts (`_score`). `predict`, `eval`, `serve` and the CLI all build theirs with `load_engine`, so each of
them runs on every engine in `smalltune.registry.ENGINES`.

When the task kind answers by scoring (`TaskKind.scores_choices`: classify with infer.classify: score), `generate`
scores each record's choices (`score_candidates`) instead of decoding: each choice's completion (its text and the
end-of-turn token, as training writes it) is scored after the prompt, the likeliest is the answer text, and the
softmax over the choices' summed log-probabilities is the answer's `probabilities`.
"""

from __future__ import annotations

import itertools
import math
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from transformers import PreTrainedTokenizerBase

from smalltune.config import TaskConfig
from smalltune.data.records import Record
from smalltune.errors import ModelError
from smalltune.formatting import answer_ids, end_of_turn_ids, prompts_for
from smalltune.models import load_tokenizer, resolve_model
from smalltune.registry import ENGINES
from smalltune.runs import RunDir
from smalltune.tasks import TaskKind, build_task

OnBatch = Callable[[int], None]


@dataclass(frozen=True)
class Generation:
    """Answers in input order, what they cost, each prompt's length, and which inputs were shortened to fit; when
    the answers were chosen by scoring, each one's choices with their probabilities (summing to 1)."""

    texts: list[str]
    seconds: float
    new_tokens: int
    prompt_tokens: list[int]
    truncated: list[bool]
    probabilities: list[dict[str, float]] | None = None


class Engine(ABC):
    """Greedy answers for one task from a base model and, optionally, the run's LoRA adapter."""

    def __init__(self, tokenizer: PreTrainedTokenizerBase, config: TaskConfig):
        self.tokenizer = tokenizer
        self.config = config
        self.task: TaskKind = build_task(config)
        self.stop_ids = end_of_turn_ids(tokenizer)
        self.constrained = config.infer.constrained

    # ---- building ------------------------------------------------------------------------------

    @classmethod
    @abstractmethod
    def from_config(cls, config: TaskConfig, adapter: Path | None = None, **options: Any) -> Engine:
        """The task's base model, with the adapter (a peft LoRA folder) attached when given."""

    @classmethod
    def from_run(cls, run: Path | str | RunDir, merge: bool = False, **options: Any) -> Engine:
        """The fine-tuned model of a run directory; with `merge`, the adapter folded in when infer.merge_adapter
        says so. `options` go to the engine (e.g. vLLM's `settings`)."""
        run = RunDir.load(run)
        engine = cls.from_config(run.config(), run.adapter, **options)
        return engine.merged() if merge and engine.config.infer.merge_adapter else engine

    @staticmethod
    def base_model_and_tokenizer(config: TaskConfig, adapter: Path | None) -> tuple[str, PreTrainedTokenizerBase]:
        """The base model's local path (converted on first use) and the tokenizer: the adapter's own (saved with
        its chat template at training), else the base model's with the task's chat template."""
        path = resolve_model(config.model.name)
        if adapter is not None:
            return path, load_tokenizer(str(adapter))
        return path, load_tokenizer(path, config.model.chat_template)

    # ---- what an engine implements ---------------------------------------------------------------

    @abstractmethod
    def grammar(self, record: Record) -> Any | None:
        """The engine's form of the record's answer grammar (`TaskKind.grammar`); None when decoding is free."""

    @abstractmethod
    def _answer(self, prompts: list[list[int]], grammars: list | None, on_batch: OnBatch | None) -> tuple[list[str], int]:
        """The answer text of each prompt (in order) and the number of tokens generated."""

    def _score(self, prompts: list[list[int]], candidates: list[list[list[int]]],
               on_batch: OnBatch | None) -> list[list[float]]:
        """The summed token log-probability of each of `candidates[i]` (token ids) right after prompt i."""
        raise ModelError(f"the {type(self).__name__} cannot score candidate answers; set infer.classify: generate "
                         "in the task file to decode the label instead")

    @abstractmethod
    def untuned(self) -> AbstractContextManager[None]:
        """A context within which the engine answers as the base model, its adapter off."""

    @abstractmethod
    def merged(self) -> Engine:
        """The engine with its adapter folded into the base weights where that makes it faster."""

    # ---- answering ---------------------------------------------------------------------------------

    def generate_ids(self, prompts: list[list[int]], on_batch: OnBatch | None = None,
                     grammars: list | None = None) -> Generation:
        """Answers for ready-made prompt token ids; `grammars[i]`, when given, constrains answer i.

        `on_batch` is called with 0 when decoding starts, then with the number of answers finished since.
        """
        started = time.perf_counter()
        texts, tokens = self._answer(prompts, grammars, on_batch)
        return Generation(texts, time.perf_counter() - started, tokens, [len(p) for p in prompts], [False] * len(prompts))

    def generate(self, records: Sequence[Record], on_batch: OnBatch | None = None, shots: Sequence[Record] = (),
                 budget: int | None = None) -> Generation:
        """Answers for the records, prompted with the task's messages (after `shots` solved examples if given).

        `budget` is the prompt's length limit in tokens (default model.max_length); inputs are shortened to fit it.
        """
        if self.task.scores_choices:
            return self.score_candidates(records, on_batch, shots, budget)
        started = time.perf_counter()
        prompts, truncated = prompts_for(self.tokenizer, self.task, records, self.config, shots, budget)
        grammars = [self.grammar(record) for record in records]
        texts, tokens = self._answer(prompts, None if all(g is None for g in grammars) else grammars, on_batch)
        return Generation(texts, time.perf_counter() - started, tokens, [len(p) for p in prompts], truncated)

    def score_candidates(self, records: Sequence[Record], on_batch: OnBatch | None = None, shots: Sequence[Record] = (),
                         budget: int | None = None) -> Generation:
        """Each record's answer chosen among `task.choices(record)` by scoring, with the probability of each choice.

        The prompts are those `generate` builds (after `shots`, within `budget`); nothing is generated (new_tokens 0).
        Raises ValueError naming the record when it has no choices.
        """
        started = time.perf_counter()
        prompts, truncated = prompts_for(self.tokenizer, self.task, records, self.config, shots, budget)
        choices = [self.task.choices(record) for record in records]
        for record, labels in zip(records, choices):
            if not labels:
                raise ValueError(f"{record.where}: no candidate labels to choose from")
        flat = answer_ids(self.tokenizer, self.task, [replace(r, output=c) for r, labels in zip(records, choices)
                                                      for c in labels])
        log_probs = self._score(prompts, split_by(flat, [len(labels) for labels in choices]), on_batch)
        probabilities = [dict(zip(labels, _softmax(scores))) for labels, scores in zip(choices, log_probs)]
        texts = [max(p, key=p.__getitem__) for p in probabilities]
        return Generation(texts, time.perf_counter() - started, 0, [len(p) for p in prompts], truncated, probabilities)


def split_by(flat: Sequence[Any], sizes: Sequence[int]) -> list[list[Any]]:
    """`flat` cut into consecutive groups of the given sizes."""
    ends = list(itertools.accumulate(sizes))
    return [list(flat[end - size : end]) for size, end in zip(sizes, ends)]


def _softmax(log_probs: list[float]) -> list[float]:
    """Probabilities proportional to exp(log_probs), summing to 1."""
    top = max(log_probs)
    weights = [math.exp(value - top) for value in log_probs]
    total = sum(weights)
    return [w / total for w in weights]


def load_engine(run: Path | str | RunDir, name: str = "transformers", merge: bool = True, **options: Any) -> Engine:
    """The run's fine-tuned model in the engine registered as `name` (`smalltune.registry.ENGINES`).

    With `merge` the adapter is folded in where the task file allows it (infer.merge_adapter); `options` go to
    the engine's `from_config`.
    """
    return ENGINES.get(name).from_run(run, merge=merge, **options)
