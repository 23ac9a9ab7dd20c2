"""The inference engine: the only place that calls `generate`.

Prompts are built by `formatting.prompts_for` (the rendering and shortening training used), sorted by length and
batched with left padding; decoding is greedy and stops at the template's end-of-turn token.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from peft import PeftModel
from transformers import PreTrainedModel, PreTrainedTokenizerBase
from xgrammar import CompiledGrammar

from smalltune.config import TaskConfig, load_config
from smalltune.constrain import Grammars, logits_processor
from smalltune.data import Record
from smalltune.formatting import end_of_turn_ids, prompts_for
from smalltune.models import choose_dtype, load_model, load_tokenizer, resolve_model
from smalltune.tasks import TaskKind, build_task
from smalltune.train import ADAPTER_DIR


@dataclass
class Generation:
    """Answers in input order, what they cost, and which inputs were shortened to fit."""

    texts: list[str]
    seconds: float
    new_tokens: int
    truncated: list[bool]


class RecordEngine:
    """What every engine shares: records become prompts (and grammars) the same way, then `generate_ids` answers."""

    tokenizer: PreTrainedTokenizerBase
    task: TaskKind
    config: TaskConfig

    def grammar(self, record: Record) -> object | None:
        """The engine's form of the grammar this record's answer follows; None when decoding is free."""
        raise NotImplementedError

    def generate_ids(self, prompts: list[list[int]], on_batch: Callable[[int], None] | None, grammars: list | None) -> Generation:
        raise NotImplementedError

    def generate(
        self,
        records: list[Record],
        on_batch: Callable[[int], None] | None = None,
        shots: Sequence[Record] = (),
    ) -> Generation:
        """Answers for the records (prompted with the task's messages, after `shots` solved examples if given).

        `on_batch` is called with 0 when decoding starts, then with the number of answers finished since.
        """
        started = time.perf_counter()
        prompts, truncated = prompts_for(self.tokenizer, self.task, records, self.config, shots)
        grammars = [self.grammar(r) for r in records]
        generation = self.generate_ids(prompts, on_batch, None if all(g is None for g in grammars) else grammars)
        generation.truncated = truncated
        generation.seconds = time.perf_counter() - started
        return generation


class Engine(RecordEngine):
    """Batched greedy generation for one task, with an optional LoRA adapter that can be switched off."""

    def __init__(self, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, config: TaskConfig):
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.config = config
        self.task: TaskKind = build_task(config)
        self.stop_ids = end_of_turn_ids(tokenizer)
        self.grammars = (
            Grammars(tokenizer, self.task, model.config.vocab_size, self.stop_ids, config.infer.grounded)
            if config.infer.constrained and config.kind != "chat"
            else None
        )

    @classmethod
    def from_config(cls, config: TaskConfig, adapter: Path | None = None) -> Engine:
        """The task's base model, with the adapter attached when one is given."""
        path = resolve_model(config.model.name)
        model = load_model(path, choose_dtype(config.model.dtype))
        tokenizer = load_tokenizer(str(adapter) if adapter else path, None if adapter else config.model.chat_template)
        if adapter is not None:
            model = PeftModel.from_pretrained(model, str(adapter))
        return cls(model, tokenizer, config)

    @classmethod
    def from_run(cls, run_dir: Path, merge: bool = False) -> Engine:
        """The fine-tuned model of a run directory; with `merge`, the adapter folded in when infer.merge_adapter says so."""
        engine = cls.from_config(load_config(Path(run_dir) / "task.yaml"), Path(run_dir) / ADAPTER_DIR)
        return engine.merged() if merge and engine.config.infer.merge_adapter else engine

    def merged(self) -> Engine:
        """This engine with its LoRA adapter folded into the base weights: no adapter matmuls per step, no untuned mode."""
        if isinstance(self.model, PeftModel):
            self.model = self.model.merge_and_unload()
        return self

    @contextlib.contextmanager
    def untuned(self) -> Iterator[None]:
        """Within this block the adapter is off: the engine answers as the base model."""
        if isinstance(self.model, PeftModel):
            with self.model.disable_adapter():
                yield
        else:
            yield

    @torch.inference_mode()
    def _generate_batch(self, batch: list[list[int]], grammars: list | None) -> tuple[list[str], int]:
        width = max(len(ids) for ids in batch)
        pad = self.tokenizer.pad_token_id
        input_ids = torch.tensor([[pad] * (width - len(ids)) + ids for ids in batch], device=self.model.device)
        mask = torch.tensor([[0] * (width - len(ids)) + [1] * len(ids) for ids in batch], device=self.model.device)
        out = self.model.generate(
            input_ids=input_ids,
            attention_mask=mask,
            max_new_tokens=self.config.infer.max_new_tokens,
            do_sample=False,
            repetition_penalty=self.config.infer.repetition_penalty,
            eos_token_id=self.stop_ids,
            pad_token_id=pad,
            logits_processor=[logits_processor(grammars)] if grammars else None,
        )
        new = out[:, width:]
        produced = int(sum((row != pad).sum() for row in new))
        return self.tokenizer.batch_decode(new, skip_special_tokens=True), produced

    def grammar(self, record: Record) -> CompiledGrammar | None:
        """The compiled grammar this record's answer follows, or None when decoding is free."""
        return self.grammars.for_record(record) if self.grammars else None

    def generate_ids(
        self,
        prompts: list[list[int]],
        on_batch: Callable[[int], None] | None = None,
        grammars: list[CompiledGrammar | None] | None = None,
    ) -> Generation:
        """Answers for ready-made prompt token ids, longest prompts first, in batches of infer.batch_size.

        `grammars[i]`, when given, constrains the answer to prompt i (see `constrain.Grammars`).
        """
        started = time.perf_counter()
        order = sorted(range(len(prompts)), key=lambda i: -len(prompts[i]))
        if on_batch:
            on_batch(0)
        texts: list[str] = [""] * len(prompts)
        tokens = 0
        size = self.config.infer.batch_size
        for start in range(0, len(order), size):
            chunk = order[start : start + size]
            chunk_grammars = [grammars[i] for i in chunk] if grammars and grammars[chunk[0]] is not None else None
            answers, produced = self._generate_batch([prompts[i] for i in chunk], chunk_grammars)
            tokens += produced
            for i, answer in zip(chunk, answers):
                texts[i] = answer
            if on_batch:
                on_batch(len(chunk))
        return Generation(texts, time.perf_counter() - started, tokens, [False] * len(prompts))
