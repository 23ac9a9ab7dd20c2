"""The engine seam: what every inference engine does, `Generation`, and the one way to build an engine.

Every engine gets its prompts from `formatting.shown_prompts` (the rendering and shortening training used)
and its answer grammars from the task kind, built from each record as shown (its input shortened to fit, so
a grounded value can only copy text the model saw), decodes greedily and stops at the template's end-of-turn
token. A record that cannot be shown or grounded is not answered: its `Generation.problems` entry says why.
An engine implements only how to answer ready prompt ids (`_answer`), how to switch the adapter off (`untuned`) and
how to fold it in (`merged`), and, to answer by scoring, how to score candidate answers after their prompts
(`_score`). `predict`, `eval`, `serve` and the CLI all build theirs with `load_engine`, so each of them runs on
every engine in `smalltune.registry.ENGINES`. The engine a task file names by default, `auto`, is chosen by
`choose_engine` (the OpenVINO engine on a CPU where it can answer, else the transformers engine) and logged.

When the task kind answers by scoring (`TaskKind.scores_choices`: classify with infer.classify: score), `generate`
scores each record's choices (`score_candidates`) instead of decoding: each choice's completion (its text and the
end-of-turn token, as training writes it) is scored after the prompt, the likeliest is the answer text, and the
softmax over the choices' summed log-probabilities is the answer's `probabilities`.
"""

from __future__ import annotations

import importlib.util
import itertools
import logging
import math
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from transformers import AutoConfig, PreTrainedTokenizerBase

from smalltune.config import TaskConfig
from smalltune.data.records import Record
from smalltune.errors import InputError, ModelError
from smalltune.formatting import Shown, choice_answer_ids, end_of_turn_ids, shown_prompts
from smalltune.gguf_writer import ARCHITECTURES
from smalltune.models import load_tokenizer, resolve_model
from smalltune.registry import AUTO_ENGINE, ENGINES
from smalltune.runs import RunDir
from smalltune.tasks import TaskKind, build_task

log = logging.getLogger(__name__)

OnBatch = Callable[[int], None]


@dataclass(frozen=True)
class Generation:
    """Answers in input order, what they cost, each prompt's length, which inputs were shortened to fit, and
    why a record was not answered (its text is then ''), None for each answered one; when the answers were chosen
    by scoring, each one's choices with their probabilities (summing to 1; None for a record not answered)."""

    texts: list[str]
    seconds: float
    new_tokens: int
    prompt_tokens: list[int]
    truncated: list[bool]
    problems: list[str | None]
    probabilities: list[dict[str, float] | None] | None = None


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

    def grammar(self, record: Record) -> Any | None:
        """The engine's form of the record's answer grammar; here the EBNF of `TaskKind.grammar` (an engine that
        compiles grammars itself overrides this), None when decoding is free (infer.constrained off, or chat)."""
        return self.task.grammar(record, self.config.infer.grounded) if self.constrained else None

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
        return Generation(texts, time.perf_counter() - started, tokens, [len(p) for p in prompts], [False] * len(prompts),
                          [None] * len(prompts))

    def generate(self, records: Sequence[Record], on_batch: OnBatch | None = None, shots: Sequence[Record] = (),
                 budget: int | None = None) -> Generation:
        """Answers for the records, prompted with the task's messages (after `shots` solved examples if given).

        `budget` is the prompt's length limit in tokens (default model.max_length); inputs are shortened to fit it.
        A record whose prompt cannot fit, or whose shown input is too long to ground, gets a problem, not an answer.
        """
        if self.task.scores_choices:
            return self.score_candidates(records, on_batch, shots, budget)
        started = time.perf_counter()
        shown = shown_prompts(self.tokenizer, self.task, records, self.config, shots, budget)
        outcomes = [self._grammar_of(s) for s in shown]
        problems = [problem for _, problem in outcomes]
        asked = [i for i, problem in enumerate(problems) if problem is None]
        grammars = [outcomes[i][0] for i in asked]
        answers, tokens = self._answer([shown[i].ids for i in asked],
                                       grammars if any(g is not None for g in grammars) else None,
                                       on_batch) if asked else ([], 0)
        texts = [""] * len(records)
        for i, answer in zip(asked, answers):
            texts[i] = answer
        return Generation(texts, time.perf_counter() - started, tokens, [len(s.ids) for s in shown],
                          [s.truncated for s in shown], problems)

    def _grammar_of(self, shown: Shown) -> tuple[Any | None, str | None]:
        """The grammar of the record as shown, or why the record cannot be answered (its input cannot be shown,
        or is too long to ground)."""
        if shown.problem is not None:
            return None, _not_shown(shown)
        try:
            return self.grammar(shown.record), None
        except InputError as exc:
            return None, f"{shown.record.where}: {exc}"

    def score_candidates(self, records: Sequence[Record], on_batch: OnBatch | None = None, shots: Sequence[Record] = (),
                         budget: int | None = None) -> Generation:
        """Each record's answer chosen among `task.choices(record)` by scoring, with the probability of each choice.

        The prompts are those `generate` builds (after `shots`, within `budget`); nothing is generated (new_tokens 0).
        A record that cannot be shown, or has no choices, gets a problem instead of an answer.
        """
        started = time.perf_counter()
        shown = shown_prompts(self.tokenizer, self.task, records, self.config, shots, budget)
        choices = [self.task.choices(s.record) if s.problem is None else [] for s in shown]
        problems = [_not_shown(s) if s.problem is not None
                    else None if labels else f"{s.record.where}: no candidate labels to choose from"
                    for s, labels in zip(shown, choices)]
        asked = [i for i, problem in enumerate(problems) if problem is None]
        candidates = choice_answer_ids(self.tokenizer, self.task, [shown[i].record for i in asked])
        log_probs = self._score([shown[i].ids for i in asked], candidates, on_batch) if asked else []
        texts: list[str] = [""] * len(records)
        probabilities: list[dict[str, float] | None] = [None] * len(records)
        for i, scores in zip(asked, log_probs):
            probabilities[i] = dict(zip(choices[i], _softmax(scores)))
            texts[i] = max(probabilities[i], key=probabilities[i].__getitem__)
        return Generation(texts, time.perf_counter() - started, 0, [len(s.ids) for s in shown],
                          [s.truncated for s in shown], problems, probabilities)


def _not_shown(shown: Shown) -> str:
    """Why a record that cannot be shown gets no answer, naming where it is."""
    return f"{shown.record.where}: {shown.problem}"


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


def choose_engine(config: TaskConfig) -> tuple[str, str]:
    """The engine `auto` stands for, and why: OpenVINO GenAI's continuous batching on a CPU (1.9-2.2x the transformers
    engine's records/s on the complaints, the same answers), unless the machine has a GPU, the task answers by
    scoring candidates (classify with infer.classify: score), OpenVINO GenAI is not installed, or the model's
    architecture cannot be written as GGUF; then the transformers engine."""
    if torch.cuda.is_available():
        return "transformers", "a GPU is present"
    if build_task(config).scores_choices:
        return "transformers", "the task answers by scoring its candidates (infer.classify: score)"
    if importlib.util.find_spec("openvino_genai") is None:
        return "transformers", "OpenVINO GenAI is not installed: pip install 'smalltune[openvino]'"
    architecture = AutoConfig.from_pretrained(resolve_model(config.model.name)).model_type
    if architecture not in ARCHITECTURES:
        return "transformers", f"OpenVINO reads {', '.join(ARCHITECTURES)} models as GGUF, not {architecture}"
    return "openvino", "a CPU, a task that decodes its answers, and a model OpenVINO GenAI reads"


def load_engine(run: Path | str | RunDir, name: str | None = None, merge: bool = True, **options: Any) -> Engine:
    """The run's fine-tuned model in the engine registered as `name` (`smalltune.registry.ENGINES`); None: the task
    file's infer.engine; `auto`: the one `choose_engine` picks (logged with its reason).

    With `merge` the adapter is folded in where the task file allows it (infer.merge_adapter); `options` go to
    the engine's `from_config`.
    """
    run = RunDir.load(run)
    if name is None or name == AUTO_ENGINE:
        config = run.config()
        name = name or config.infer.engine
        if name == AUTO_ENGINE:
            name, reason = choose_engine(config)
            log.info("engine: %s (%s)", name, reason)
    return ENGINES.get(name).from_run(run, merge=merge, **options)
