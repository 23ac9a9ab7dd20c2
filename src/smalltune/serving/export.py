"""`smalltune export`: a run's model in a form other servers load as-is.

`export_merged` folds the LoRA adapter into the base weights and writes a standalone Hugging Face
directory (safetensors, tokenizer with its chat template, a greedy `generation_config.json` that
stops at the template's end-of-turn token, and the run's task.yaml). It is a standard layout with
no custom code, so vLLM (`vllm serve DIR`), SGLang (`--model-path DIR`) and plain
`AutoModelForCausalLM.from_pretrained(DIR)` load it without options. vLLM and SGLang ignore
`do_sample`: ask them for `temperature=0` to get the greedy answers the run was evaluated with.

`export_gguf` writes the merged model as one GGUF file for llama.cpp and Ollama (`gguf_writer`), with a
Modelfile and a README beside it.

`export_adapter` copies the adapter alone (a few MB) with a README on how those servers attach it.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path

import torch
from peft import PeftModel
from transformers import AutoConfig, GenerationConfig, PreTrainedModel, PreTrainedTokenizerBase

from smalltune.errors import OutputError
from smalltune.formatting import end_of_turn_ids
from smalltune.io import atomic_write_text
from smalltune.models import load_model, load_tokenizer, resolve_model
from smalltune.runs import RunDir
from smalltune.gguf_writer import file_types, gguf_architecture, modelfile, readme, write_gguf


def _check_out(out_dir: Path) -> None:
    """OutputError unless out_dir is new or an empty folder."""
    if out_dir.exists() and not out_dir.is_dir():
        raise OutputError(f"--out {out_dir}: is a file; give a new folder to write the model into")
    if out_dir.exists() and any(out_dir.iterdir()):
        raise OutputError(f"--out {out_dir}: exists and is not empty; choose another folder or delete it")


def _write_into(out_dir: Path, fill: Callable[[Path], None]) -> Path:
    """Let `fill` write a fresh folder beside out_dir, then rename it into place (no half-written export)."""
    out_dir = Path(out_dir)
    _check_out(out_dir)
    staging = out_dir.with_name(f".{out_dir.name}.partial")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    try:
        fill(staging)
        if out_dir.exists():
            out_dir.rmdir()
        os.replace(staging, out_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return out_dir


def _saved_dtype(model_path: str) -> torch.dtype:
    """The dtype the base checkpoint is stored in (float32 when it does not say)."""
    dtype = getattr(AutoConfig.from_pretrained(model_path), "dtype", None)
    return getattr(torch, dtype) if isinstance(dtype, str) else dtype or torch.float32


def _greedy_generation_config(
    base: GenerationConfig, stop_ids: list[int], pad_id: int | None, repetition_penalty: float
) -> GenerationConfig:
    """The base's settings made greedy with the run's repetition penalty, stopping at every end-of-turn id the
    engine stops at."""
    sampling = {"do_sample", "temperature", "top_p", "top_k", "min_p", "typical_p", "repetition_penalty",
                "transformers_version"}
    settings = {k: v for k, v in base.to_diff_dict().items() if k not in sampling and not k.startswith("_")}
    settings.update(do_sample=False, eos_token_id=stop_ids, pad_token_id=pad_id)
    if repetition_penalty != 1.0:
        settings["repetition_penalty"] = repetition_penalty
    return GenerationConfig(**settings)


def _merged(run: RunDir, base_path: str) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """The base model with the run's adapter folded in (in float32), and the run's tokenizer."""
    tuned = PeftModel.from_pretrained(load_model(base_path, torch.float32), str(run.adapter))
    return tuned.merge_and_unload(), load_tokenizer(str(run.adapter))


def export_merged(run_dir: Path, out_dir: Path) -> Path:
    """Write base + adapter as one standalone model directory; returns out_dir.

    The merge is done in float32 and saved in the base checkpoint's dtype.
    """
    _check_out(Path(out_dir))  # before the merge, which takes a while
    run = RunDir.load(run_dir)
    config = run.config()
    base_path = resolve_model(config.model.name)
    merged, tokenizer = _merged(run, base_path)
    merged = merged.to(_saved_dtype(base_path))
    merged.generation_config = _greedy_generation_config(
        merged.generation_config, end_of_turn_ids(tokenizer), tokenizer.pad_token_id, config.infer.repetition_penalty
    )

    def fill(folder: Path) -> None:
        merged.save_pretrained(folder)
        tokenizer.save_pretrained(folder)
        shutil.copyfile(run.task_file, folder / run.task_file.name)

    return _write_into(out_dir, fill)


def export_gguf(run_dir: Path, out_dir: Path, gguf_type: str = "bf16") -> Path:
    """Write base + adapter as one GGUF file (`model.gguf`) with an Ollama Modelfile and a README; returns out_dir.

    The merge is done in float32 and written as bf16, f16 or q8_0 (`gguf_type`).
    """
    _check_out(Path(out_dir))
    file_types(gguf_type)
    run = RunDir.load(run_dir)
    config = run.config()
    base_path = resolve_model(config.model.name)
    gguf_architecture(AutoConfig.from_pretrained(base_path))  # refused before the merge
    merged, tokenizer = _merged(run, base_path)
    stop_ids = end_of_turn_ids(tokenizer)
    ollama = modelfile(tokenizer, tokenizer.convert_ids_to_tokens(stop_ids), config.system, config.model.enable_thinking,
                       config.infer.repetition_penalty, config.model.max_length + config.infer.max_new_tokens)
    thinking_switch = "enable_thinking" in tokenizer.chat_template and not config.model.enable_thinking

    def fill(folder: Path) -> None:
        write_gguf(merged, tokenizer, folder / "model.gguf", gguf_type, config.name, stop_ids[0])
        atomic_write_text(folder / "Modelfile", ollama)
        atomic_write_text(folder / "README.txt", readme(config.name, config.model.name, gguf_type, thinking_switch))
        shutil.copyfile(run.task_file, folder / run.task_file.name)

    return _write_into(out_dir, fill)


def export_adapter(run_dir: Path, out_dir: Path) -> Path:
    """Copy the run's adapter, tokenizer and task.yaml, with a README on serving it over its base model."""
    run = RunDir.load(run_dir)
    config = run.config()
    base = json.loads((run.adapter / "adapter_config.json").read_text(encoding="utf-8")).get("base_model_name_or_path")
    base = base or resolve_model(config.model.name)
    readme = (
        f"# {config.name}: LoRA adapter\n\n"
        f"Base model: `{base}`. Answers are greedy: ask for `temperature=0`.\n\n"
        f"- vLLM: `vllm serve {base} --enable-lora --lora-modules {config.name}=<this folder>`, "
        f"then request model `{config.name}`.\n"
        f"- SGLang: `python -m sglang.launch_server --model-path {base} --enable-lora "
        f"--lora-paths {config.name}=<this folder>`.\n"
        f"- A single standalone model instead: `smalltune export {run.path} --merge --out DIR`.\n"
    )

    def fill(folder: Path) -> None:
        shutil.copytree(run.adapter, folder, dirs_exist_ok=True)
        shutil.copyfile(run.task_file, folder / run.task_file.name)
        atomic_write_text(folder / "README.md", readme)

    return _write_into(out_dir, fill)
