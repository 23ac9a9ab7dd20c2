"""The OpenVINO engine: the transformers engine's answers from OpenVINO GenAI's continuous batching, for CPUs.

An `Engine` like the others (`inference.engine`): it is fed the token ids of `formatting.shown_prompts`, each
record's EBNF answer grammar (through OpenVINO GenAI's structured output, an XGrammar backend like smalltune's
own), decodes greedily and stops at the template's end-of-turn token. OpenVINO reads the model as GGUF: the
run's adapter merged into the base weights and written once as f16 (`gguf_writer.write_gguf`) into the run
directory's `openvino-f16/`; `untuned` answers from the base model, written at its first use as f16 GGUF beside
smalltune's converted models. Sequences join and leave the running batch one by one (a finished answer's slot is refilled at
once, nothing is padded to the longest answer), and a prompt opening computed once is reused from the prefix
cache. It does not answer by scoring candidates (a classify task needs infer.classify: generate here). It is the
engine `auto` picks on a CPU where it can answer (`inference.engine.choose_engine`).

On the 2-core development CPUs (`benchmarks/engines.py`, 64 held-out complaints, grounded grammars): 1.69 records/s
against the transformers engine's 0.87 at batch 16 on one with bf16 instructions, 0.74 against 0.34 (fp32) on one
without; the same answer for all 64 records.
OpenVINO GenAI is imported only when an engine is built: `pip install 'smalltune[openvino]'`.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from peft import PeftModel
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from smalltune.config import TaskConfig
from smalltune.errors import ModelError
from smalltune.formatting import end_of_turn_ids
from smalltune.inference.engine import Engine, OnBatch
from smalltune.gguf_writer import write_gguf
from smalltune.models import cache_root, load_model, resolve_model

INSTALL_HINT = "pip install 'smalltune[openvino]' (OpenVINO GenAI)"
GGUF_TYPE = "f16"  # OpenVINO's GGUF reader takes f16 and q8_0, not bf16
KV_CACHE_GIB = 2
SUBMITTED = 64  # prompts handed to the pipeline at a time: enough to keep its batch full, few enough for a progress bar


class OpenVinoEngine(Engine):
    """Greedy answers from OpenVINO GenAI's continuous-batching pipeline over GGUF files of the tuned and base models."""

    def __init__(self, tokenizer: PreTrainedTokenizerBase, config: TaskConfig, model_path: str, adapter: Path | None):
        super().__init__(tokenizer, config)
        self._model_path = model_path
        self._adapter = adapter
        self._pipelines: dict[str, Any] = {}
        self._active = "tuned"

    @classmethod
    def from_config(cls, config: TaskConfig, adapter: Path | None = None, **options: Any) -> OpenVinoEngine:
        """The run's merged model (its GGUF written once into the run directory), or the base model without one."""
        _openvino()
        path, tokenizer = cls.base_model_and_tokenizer(config, adapter)
        engine = cls(tokenizer, config, path, adapter)
        engine._pipeline()  # the model is compiled here, as the other engines load theirs, not at the first answer
        return engine

    def merged(self) -> OpenVinoEngine:
        """The engine as it is: the adapter is merged into the GGUF file it reads."""
        return self

    @contextlib.contextmanager
    def untuned(self) -> Iterator[None]:
        """Within this block the engine answers from the base model's GGUF."""
        self._active = "base"
        try:
            yield
        finally:
            self._active = "tuned"

    def _gguf(self) -> Path:
        """The active model's GGUF file, written at its first use: the base model's (untuned, or no adapter) or the
        adapter merged into it."""
        if self._active == "base" or self._adapter is None:
            return base_gguf(self._model_path, self.tokenizer, self.config)
        return tuned_gguf(self._adapter, self.tokenizer, self.config)

    def _pipeline(self) -> Any:
        """The continuous-batching pipeline of the active model, built at its first use."""
        if self._active not in self._pipelines:
            og = _openvino()
            scheduler = og.SchedulerConfig()
            scheduler.enable_prefix_caching = True
            scheduler.max_num_seqs = self.config.infer.batch_size
            scheduler.cache_size = KV_CACHE_GIB
            self._pipelines[self._active] = og.ContinuousBatchingPipeline(
                str(self._gguf()), scheduler, "CPU", {"INFERENCE_NUM_THREADS": torch.get_num_threads()})
        return self._pipelines[self._active]

    def _answer(self, prompts: list[list[int]], grammars: list | None, on_batch: OnBatch | None) -> tuple[list[str], int]:
        """All prompts through the pipeline, SUBMITTED at a time."""
        import numpy as np
        import openvino as ov

        og, pipeline = _openvino(), self._pipeline()
        if on_batch:
            on_batch(0)
        texts, tokens = [], 0
        for start in range(0, len(prompts), SUBMITTED):
            chunk = range(start, min(start + SUBMITTED, len(prompts)))
            configs = [self._generation_config(og, grammars[i] if grammars else None) for i in chunk]
            results = pipeline.generate([ov.Tensor(np.array([prompts[i]], dtype=np.int64)) for i in chunk], configs)
            for result in results:
                ids = [token for token in result.m_generation_ids[0] if token not in self.stop_ids]
                texts.append(self.tokenizer.decode(ids, skip_special_tokens=True))
                tokens += len(ids)
            if on_batch:
                on_batch(len(chunk))
        return texts, tokens

    def _generation_config(self, og: Any, grammar: str | None) -> Any:
        """Greedy, stopping at end of turn, within infer.max_new_tokens, following `grammar` when given."""
        config = og.GenerationConfig(max_new_tokens=self.config.infer.max_new_tokens, do_sample=False,
                                     repetition_penalty=self.config.infer.repetition_penalty)
        config.stop_token_ids = set(self.stop_ids)
        if grammar is not None:
            config.structured_output_config = og.StructuredOutputConfig(grammar=grammar)
        return config


def tuned_gguf(adapter: Path, tokenizer: PreTrainedTokenizerBase, config: TaskConfig) -> Path:
    """The adapter merged into its base model (in float32) as f16 GGUF, written into the run directory at first use
    and again whenever the adapter is newer than the file (a run trained again in place)."""
    written = adapter.parent / f"openvino-{GGUF_TYPE}" / "model.gguf"
    trained = max(f.stat().st_mtime_ns for f in adapter.iterdir() if f.is_file())
    if not written.exists() or written.stat().st_mtime_ns < trained:
        base = load_model(resolve_model(config.model.name), torch.float32)
        _write_once(PeftModel.from_pretrained(base, str(adapter)).merge_and_unload(), tokenizer, written, config)
    return written


def base_gguf(model_path: str, tokenizer: PreTrainedTokenizerBase, config: TaskConfig) -> Path:
    """The base model as f16 GGUF, written once under smalltune's model cache (named by the model folder and
    when its files were written, so a changed model is written anew)."""
    folder = Path(model_path).resolve()
    stamp = max((f.stat().st_mtime_ns for f in folder.iterdir() if f.is_file()), default=0)
    key = hashlib.sha1(f"{folder}:{stamp}".encode()).hexdigest()[:12]
    path = cache_root() / "openvino" / f"{re.sub(r'[^A-Za-z0-9._-]+', '_', folder.name)}-{key}-{GGUF_TYPE}.gguf"
    if not path.exists():
        _write_once(load_model(model_path, torch.float32), tokenizer, path, config)
    return path


def _write_once(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, path: Path, config: TaskConfig) -> None:
    """The model as f16 GGUF at `path`, renamed into place whole (no half-written file is ever read; processes
    writing the same file at once, such as Ray workers on one machine, each write their own partial file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.{os.getpid()}.partial")
    write_gguf(model, tokenizer, partial, GGUF_TYPE, config.name, end_of_turn_ids(tokenizer)[0])
    os.replace(partial, path)


def _openvino() -> Any:
    """openvino_genai, or a ModelError saying how to install it."""
    try:
        import openvino_genai
    except ImportError as exc:
        raise ModelError(f"the OpenVINO engine needs OpenVINO GenAI: {INSTALL_HINT}") from exc
    return openvino_genai
