"""The vLLM engine: the same answers as the transformers engine, from vLLM's continuous batching.

An `Engine` like the others (`inference.engine`), it keeps the same promises: vLLM is fed the token ids of
`formatting.shown_prompts` (the prompts training used), the task kind's EBNF grammars (through vLLM's
structured outputs, xgrammar backend), greedy decoding that stops at the template's end-of-turn token,
and the run's LoRA adapter served beside the base model, never merged into it. It does not answer by scoring
candidates (a classify task needs infer.classify: generate here): vLLM's prompt log-probabilities would score
each prompt + candidate sequence anew, the prompt once per candidate.

vLLM is imported only when an engine is built, so smalltune works without it. vLLM pins its own
transformers, so on a CPU it lives in a venv of its own: `make setup-vllm` builds `.venv-vllm`.
A script that builds a `VllmEngine` must guard its entry point with `if __name__ == "__main__":`,
because vLLM starts its workers as fresh Python processes that import the main module.
"""

from __future__ import annotations

import contextlib
import functools
import importlib.util
import io
import os
import typing
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from transformers import PreTrainedTokenizerBase

from smalltune.config import TaskConfig
from smalltune.errors import ConfigError, ModelError
from smalltune.inference.engine import Engine, OnBatch
from smalltune.models import choose_dtype
from smalltune.tasks import build_task

INSTALL_HINT = "build its environment with `make setup-vllm` and run .venv-vllm/bin/smalltune (with a GPU: pip install 'vllm>=0.33')"
CPU_KV_CACHE_GIB = 1.0
_ADAPTER_IDS: dict[Path, int] = {}


@dataclass(frozen=True)
class VllmSettings:
    """vLLM's own options, handed to `vllm.LLM` as they are; the defaults serve one machine.

    Parallelism is vLLM's, switched on here and not re-implemented:
    - `tensor_parallel_size=N` splits every layer over N GPUs of one machine.
    - `distributed_executor_backend="ray"` runs the workers on a Ray cluster, so that
      `tensor_parallel_size` (times `pipeline_parallel_size`, given in `engine_args`) can span
      several machines; start the cluster first (`ray start --head`, then `ray start --address=...`
      on the others) and run smalltune on the head node. None lets vLLM choose (processes on one machine).

    `kv_cache_gib` is the memory for the KV cache; None means 1 GiB of RAM on a CPU (or
    $VLLM_CPU_KVCACHE_SPACE when set), and vLLM's `gpu_memory_utilization` share on a GPU.
    `enforce_eager` skips torch.compile and CUDA graphs, so the engine starts sooner and runs slower;
    None means on for a CPU (minutes of compiling on a few cores), off for a GPU.
    `prefix_caching` reuses the KV cache of prompt prefixes already computed (the instruction, few-shot
    examples): faster, but in bf16 a reused prefix can flip a near-tie, so it is off by default and every
    answer is computed as the transformers engine computes it (on the complaints demo run it changed 1
    answer of 64 held-out records).
    `engine_args` holds any other `vllm.LLM` argument (e.g. `max_num_seqs`, `gpu_memory_utilization`).

    On a CPU vLLM also reads environment variables: it keeps one core for its front end
    ($VLLM_CPU_NUM_OF_RESERVED_CPU; 0 gives the model every core, 1.7x the records/s on 2 cores) and
    binds its threads to cores ($VLLM_CPU_OMP_THREADS_BIND, e.g. "0-31").
    """

    tensor_parallel_size: int = 1
    distributed_executor_backend: str | None = None
    kv_cache_gib: float | None = None
    enforce_eager: bool | None = None
    prefix_caching: bool = False
    engine_args: dict[str, Any] = field(default_factory=dict)


def require_vllm() -> None:
    """Raise a ModelError that says how to install vLLM when it is not importable."""
    if importlib.util.find_spec("vllm") is None:
        raise ModelError(f"the vLLM engine needs vLLM, which is not installed in this environment: {INSTALL_HINT}")


def _platform_defaults(settings: VllmSettings) -> dict[str, Any]:
    """The KV cache size and eager mode to ask vLLM for, with the CPU defaults filled in where left unset."""
    from vllm.platforms import current_platform

    on_cpu = current_platform.is_cpu()
    kv_gib = settings.kv_cache_gib
    if kv_gib is None and on_cpu and not os.environ.get("VLLM_CPU_KVCACHE_SPACE"):
        kv_gib = CPU_KV_CACHE_GIB  # left to itself, vLLM's CPU backend reserves 92% of the machine's RAM
    eager = on_cpu if settings.enforce_eager is None else settings.enforce_eager
    return {"kv_cache_memory_bytes": None if kv_gib is None else int(kv_gib * 2**30), "enforce_eager": eager}


def lora_rank_slot(rank: int) -> int:
    """The smallest `max_lora_rank` vLLM accepts that holds an adapter of rank `rank`."""
    from vllm.config.lora import MaxLoRARanks

    fitting = [slot for slot in typing.get_args(MaxLoRARanks) if slot >= rank]
    if not fitting:
        largest = max(typing.get_args(MaxLoRARanks))
        raise ConfigError(f"lora.r: {rank} is over {largest}, the largest LoRA rank vLLM serves; "
                          "use the transformers engine or train with a smaller lora.r")
    return fitting[0]


def _adapter_id(adapter: Path) -> int:
    """vLLM's number for an adapter folder: one per folder, as vLLM caches loaded adapters by number."""
    return _ADAPTER_IDS.setdefault(Path(adapter).resolve(), len(_ADAPTER_IDS) + 1)


class VllmEngine(Engine):
    """Greedy generation for one task through vLLM, with the run's LoRA adapter served unmerged."""

    def __init__(self, llm: Any, tokenizer: PreTrainedTokenizerBase, config: TaskConfig, adapter: Path | None = None):
        from vllm.lora.request import LoRARequest

        super().__init__(tokenizer, config)
        self.llm = llm
        self._adapter = LoRARequest(str(adapter), _adapter_id(adapter), str(adapter)) if adapter is not None else None
        self._active = self._adapter

    @classmethod
    def from_config(
        cls, config: TaskConfig, adapter: Path | None = None, settings: VllmSettings = VllmSettings(), **options: Any
    ) -> VllmEngine:
        """The task's base model in vLLM, with the adapter (a peft LoRA folder) ready to serve when given."""
        if build_task(config).scores_choices:
            raise ModelError(f"task '{config.name}': the vLLM engine does not score candidate labels; set "
                             "infer.classify: generate in the task file (the label decoded, one of the candidates), "
                             "or use the transformers engine, which scores them")
        require_vllm()
        from vllm import LLM

        path, tokenizer = cls.base_model_and_tokenizer(config, adapter)
        lora = {"enable_lora": True, "max_lora_rank": lora_rank_slot(config.lora.r), "max_loras": 1} if adapter else {}
        llm = LLM(
            path,
            dtype=str(choose_dtype(config.model.dtype)).removeprefix("torch."),
            max_model_len=config.model.max_length + config.infer.max_new_tokens,
            tensor_parallel_size=settings.tensor_parallel_size,
            distributed_executor_backend=settings.distributed_executor_backend,
            **_platform_defaults(settings),
            structured_outputs_config={"backend": "xgrammar"},
            enable_prefix_caching=settings.prefix_caching,
            **lora,
            **settings.engine_args,
        )
        return cls(llm, tokenizer, config, adapter)

    def merged(self) -> VllmEngine:
        """The engine as it is: vLLM applies the adapter in its own LoRA kernels, beside the base weights."""
        return self

    @contextlib.contextmanager
    def untuned(self) -> Iterator[None]:
        """Within this block requests go without the adapter: the engine answers as the base model."""
        self._active = None
        try:
            yield
        finally:
            self._active = self._adapter

    def _answer(self, prompts: list[list[int]], grammars: list | None, on_batch: OnBatch | None) -> tuple[list[str], int]:
        """All prompts go to vLLM at once: its scheduler batches them as memory allows."""
        from vllm.inputs import TokensPrompt

        params = [self._sampling(grammars[i] if grammars else None) for i in range(len(prompts))]
        if on_batch:
            on_batch(0)
        outputs = self.llm.generate(
            [TokensPrompt(prompt_token_ids=ids) for ids in prompts],
            params,
            lora_request=self._active,
            use_tqdm=functools.partial(_progress_class(), on_batch) if on_batch else False,
        )
        answers = [list(out.outputs[0].token_ids) for out in outputs]
        texts = self.tokenizer.batch_decode(answers, skip_special_tokens=True)
        return texts, sum(len(ids) for ids in answers)

    def _sampling(self, grammar: str | None) -> Any:
        """Greedy decoding up to infer.max_new_tokens, stopping at end of turn, following `grammar` if given."""
        from vllm import SamplingParams
        from vllm.sampling_params import StructuredOutputsParams

        return SamplingParams(
            temperature=0.0,
            max_tokens=self.config.infer.max_new_tokens,
            repetition_penalty=self.config.infer.repetition_penalty,
            stop_token_ids=self.stop_ids,
            structured_outputs=StructuredOutputsParams(grammar=grammar) if grammar else None,
            detokenize=False,  # the answers are decoded below by the tokenizer the transformers engine uses
        )


@functools.cache
def _progress_class() -> type:
    """A silent tqdm that passes each finished request on to an `on_batch` callback (vLLM's progress hook)."""
    from tqdm import tqdm

    class _Progress(tqdm):
        def __init__(self, on_batch: Callable[[int], None], *args: Any, **kwargs: Any):
            self._on_batch = on_batch
            super().__init__(*args, file=io.StringIO(), **kwargs)

        def update(self, n: float | None = 1) -> bool | None:
            shown = super().update(n)
            self._on_batch(int(n or 0))
            return shown

    return _Progress
