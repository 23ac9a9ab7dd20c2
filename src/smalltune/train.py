"""The training run: task file in, run directory (adapter, tokenizer, config, history, log) out.

LoRA through peft, the loop through TRL's SFTTrainer on pre-tokenised prompt/completion examples
(so the loss covers the answer and its end-of-turn token only).
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import torch
from datasets import Dataset
from peft import LoraConfig
from transformers import TrainerCallback
from trl import SFTConfig, SFTTrainer

from smalltune.config import TaskConfig, save_config
from smalltune.data import Record, load_splits
from smalltune.errors import DataError
from smalltune.formatting import Example, encode_examples
from smalltune.io import atomic_write_json
from smalltune.models import choose_dtype, load_model, load_tokenizer, resolve_model
from smalltune.tasks import build_task

log = logging.getLogger(__name__)

ADAPTER_DIR = "adapter"


class _JsonLog(TrainerCallback):
    """Appends every trainer log line (loss, lr, grad norm, eval) to run_dir/train_log.jsonl as it happens."""

    def __init__(self, path: Path):
        self.path = path

    def on_log(self, args, state, control, logs=None, **kwargs):
        if state.is_world_process_zero and logs:
            with self.path.open("a", encoding="utf-8") as handle:
                handle.write(json.dumps({"step": state.global_step, "time": time.time(), **logs}) + "\n")


def _dataset(examples: list[Example]) -> Dataset:
    return Dataset.from_dict(
        {"input_ids": [e.input_ids for e in examples], "completion_mask": [e.completion_mask for e in examples]}
    )


def _gradient_checkpointing(setting: str) -> bool:
    """'auto': off on CPUs (it costs time and RAM is plentiful), on for GPUs under 24 GB."""
    if setting != "auto":
        return setting == "on"
    return torch.cuda.is_available() and torch.cuda.get_device_properties(0).total_memory < 24 * 2**30


def _encode(tokenizer, task, records: list[Record], config: TaskConfig, what: str) -> list[Example]:
    examples, problems = encode_examples(
        tokenizer, task, records, config.model.max_length, config.model.enable_thinking
    )
    if problems:
        log.warning("%d %s record(s) left out, their answer does not fit:\n%s", len(problems), what, "\n".join(problems))
    truncated = sum(e.truncated for e in examples)
    if truncated:
        log.warning("%d %s record(s) had their input shortened to fit model.max_length", truncated, what)
    return examples


def sft_config(config: TaskConfig, dtype: torch.dtype, has_validation: bool) -> SFTConfig:
    """TRL settings derived from the task file; every choice is logged by the trainer."""
    t = config.train
    return SFTConfig(
        output_dir=str(config.run_dir / "checkpoints"),
        num_train_epochs=t.epochs,
        per_device_train_batch_size=t.batch_size,
        per_device_eval_batch_size=t.batch_size,
        gradient_accumulation_steps=t.gradient_accumulation,
        learning_rate=t.learning_rate,
        lr_scheduler_type="cosine",
        warmup_steps=t.warmup_ratio,
        logging_steps=t.logging_steps,
        save_steps=t.save_steps,
        save_total_limit=2,
        eval_strategy="epoch" if has_validation else "no",
        seed=t.seed,
        data_seed=t.seed,
        bf16=dtype == torch.bfloat16,
        use_cpu=not torch.cuda.is_available(),
        gradient_checkpointing=_gradient_checkpointing(t.gradient_checkpointing),
        train_sampling_strategy="group_by_length" if t.group_by_length else "random",
        max_length=None,
        completion_only_loss=True,
        report_to=[] if t.report_to == "none" else [t.report_to],
        dataloader_num_workers=0,
        disable_tqdm=False,
    )


def build_trainer(config: TaskConfig) -> SFTTrainer:
    """Data, model and LoRA wired into a ready-to-run SFTTrainer (the run directory is created)."""
    run_dir = config.run_dir
    run_dir.mkdir(parents=True, exist_ok=True)
    task = build_task(config)
    splits = load_splits(config.data, check=task.check)
    if splits.problems:
        (run_dir / "invalid_records.txt").write_text("\n".join(splits.problems) + "\n", encoding="utf-8")
        log.warning("%d invalid record(s) left out; see %s", len(splits.problems), run_dir / "invalid_records.txt")
    if not splits.train:
        raise DataError(f"{config.data.train}: no valid training records")
    save_config(config, run_dir / "task.yaml")

    model_path = resolve_model(config.model.name)
    dtype = choose_dtype(config.model.dtype)
    tokenizer = load_tokenizer(model_path, config.model.chat_template)
    train_set = _dataset(_encode(tokenizer, task, splits.train, config, "training"))
    eval_set = _dataset(_encode(tokenizer, task, splits.validation, config, "validation")) if splits.validation else None
    model = load_model(model_path, dtype)
    log.info("model %s, dtype %s, %d training / %d validation examples", model_path, dtype, len(train_set), len(eval_set or []))
    lora = config.lora
    return SFTTrainer(
        model=model,
        args=sft_config(config, dtype, eval_set is not None),
        train_dataset=train_set,
        eval_dataset=eval_set,
        processing_class=tokenizer,
        peft_config=LoraConfig(
            r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
            target_modules=lora.target_modules, task_type="CAUSAL_LM",
        ),
        callbacks=[_JsonLog(run_dir / "train_log.jsonl")],
    )


def save_run(trainer: SFTTrainer, run_dir: Path, seconds: float) -> None:
    """Adapter, tokenizer and the training summary (loss history included) into the run directory."""
    if not trainer.is_world_process_zero():
        return
    trainer.save_model(str(run_dir / ADAPTER_DIR))
    trainer.processing_class.save_pretrained(run_dir / ADAPTER_DIR)
    atomic_write_json(
        run_dir / "train_summary.json",
        {
            "base_model": trainer.model.peft_config["default"].base_model_name_or_path,
            "dtype": str(trainer.model.dtype).removeprefix("torch."),
            "train_examples": len(trainer.train_dataset),
            "validation_examples": len(trainer.eval_dataset or []),
            "seconds": round(seconds, 1),
            "history": trainer.state.log_history,
        },
    )


def train(config: TaskConfig, resume: bool = False) -> Path:
    """Fine-tune the task's model with LoRA; returns the run directory."""
    trainer = build_trainer(config)
    checkpoints = list((config.run_dir / "checkpoints").glob("checkpoint-*"))
    started = time.time()
    trainer.train(resume_from_checkpoint=bool(resume and checkpoints))
    save_run(trainer, config.run_dir, time.time() - started)
    return config.run_dir
