"""The training run: task file in, run directory (adapter, tokenizer, config, history, log) out.

LoRA through peft, the loop through TRL's SFTTrainer on pre-tokenised prompt/completion examples
(so the loss covers the answer and its end-of-turn token only).
"""

from __future__ import annotations

import dataclasses
import importlib.util
import logging
import os
import shutil
import time
from pathlib import Path

import torch
from datasets import Dataset
from peft import LoraConfig
from transformers.trainer import TRAINER_STATE_NAME
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR
from trl import SFTConfig, SFTTrainer

from smalltune.config import TaskConfig, save_config
from smalltune.data.records import Record, load_splits
from smalltune.errors import ConfigError, DataError
from smalltune.formatting import Example, choice_answer_ids, encode_examples
from smalltune.io import atomic_write_json, atomic_write_text
from smalltune.models import choose_dtype, load_model, load_tokenizer, resolve_model
from smalltune.runs import RunDir
from smalltune.tasks import build_task
from smalltune.training.callbacks import CHECKPOINT_SCORE, JsonLog, ValidationMetrics, tracker_callbacks
from smalltune.training.memory import Settings, estimate, task_architecture
from smalltune.training.trainer import CHOICE_IDS, GOLD, SmalltuneTrainer, uncast_lora_inputs

log = logging.getLogger(__name__)

# On a CPU, bf16 matmuls run oneDNN kernels that are built and cached per shape (1,024 by default): with every
# sequence length its own shape, a run keeps building kernels and its memory creeps up step after step.
CPU_PAD_MULTIPLE = 32


def _dataset(examples: list[Example], choices: dict[str, list] | None = None) -> Dataset:
    return Dataset.from_dict({"input_ids": [e.input_ids for e in examples],
                              "completion_mask": [e.completion_mask for e in examples], **(choices or {})})


def choice_columns(tokenizer, task, records: list[Record]) -> dict[str, list]:
    """Per record, each of its choices as the token ids inference scores (`choice_answer_ids`) and the index of its
    gold answer among them: what train.loss: choices trains on."""
    return {CHOICE_IDS: choice_answer_ids(tokenizer, task, records),
            GOLD: [task.choices(r).index(r.output) for r in records]}


def _gradient_checkpointing(config: TaskConfig, longest: int | None = None) -> bool:
    """'auto': on when the memory plan without it (`smalltune plan`) would fill more than 90% of the GPU, or,
    without a GPU, half of the RAM (recomputing each layer costs a CPU about a third more time). The plan is
    taken at the longest training example (`longest` tokens), the widest batch the run can meet, when known."""
    setting = config.train.gradient_checkpointing
    if setting != "auto":
        return setting == "on"
    if torch.cuda.is_available():
        available = 0.9 * torch.cuda.get_device_properties(0).total_memory
    else:
        available = 0.5 * os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    settings = dataclasses.replace(Settings.of(config), batch_size=micro_batch_size(config))
    if longest is not None:
        settings = dataclasses.replace(settings, max_length=min(settings.max_length, longest))
    return estimate(task_architecture(config), settings).total(checkpointing=False) > available


def shares_prefix(config: TaskConfig, args: SFTConfig) -> bool:
    """Whether training batches run their shared prompt opening once (train.share_prefix; 'auto': without LoRA
    dropout, where it changes no number): never with gradient checkpointing (which drops the KV cache) or more
    than one process (DDP expects one forward per backward)."""
    return _wants_shared_prefix(config) and not args.gradient_checkpointing and args.world_size == 1


def _wants_shared_prefix(config: TaskConfig) -> bool:
    setting = config.train.share_prefix
    return setting == "on" or (setting == "auto" and config.lora.dropout == 0)


def micro_batch_size(config: TaskConfig) -> int:
    """Examples per forward pass (train.micro_batch). 'auto': the whole batch on a GPU, which needs the width, or
    where the rows share their prompt opening (`share_prefix`); else one: a CPU computes a lone example as fast
    per token, never padded to a longer example's length, with a fraction of the activations. The rest of the
    batch is accumulated."""
    t = config.train
    if t.micro_batch != "auto":
        return t.micro_batch
    return t.batch_size if torch.cuda.is_available() or _wants_shared_prefix(config) else 1


def _liger_kernel(setting: str) -> bool:
    """'auto': Liger's fused kernels where they run (CUDA) and are installed."""
    available = torch.cuda.is_available() and importlib.util.find_spec("liger_kernel") is not None
    if setting == "on" and not available:
        raise ConfigError("train.liger_kernel: 'on' needs a CUDA GPU and `pip install liger-kernel`; set it to auto or off")
    return available and setting != "off"


def is_main_process() -> bool:
    """True in a single process and in rank 0 of a torchrun / accelerate launch; only it writes the run directory."""
    return int(os.environ.get("RANK", "0")) == 0


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


# transformers 5.23 renamed TrainingArguments.gradient_checkpointing (a warning on the old name in every run); the
# old name still reads back the setting
CHECKPOINTING_ARG = next(name for name in ("activation_checkpointing", "gradient_checkpointing")
                         if name in {field.name for field in dataclasses.fields(SFTConfig)})


def sft_config(config: TaskConfig, dtype: torch.dtype, has_validation: bool, longest: int | None = None) -> SFTConfig:
    """TRL settings derived from the task file (and the longest training example, in tokens, where known);
    every choice is logged by the trainer.

    With a validation split, the model is evaluated (loss and task metrics) at every checkpoint and the
    checkpoint with the best headline metric is the one kept at the end.
    """
    t = config.train
    micro = micro_batch_size(config)
    return SFTConfig(
        output_dir=str(RunDir.of(config).checkpoints),
        num_train_epochs=t.epochs,
        per_device_train_batch_size=micro,
        per_device_eval_batch_size=t.batch_size,
        gradient_accumulation_steps=t.gradient_accumulation * t.batch_size // micro,
        learning_rate=t.learning_rate,
        lr_scheduler_type="cosine",
        warmup_steps=t.warmup_ratio,
        logging_steps=t.logging_steps,
        save_steps=t.save_steps,
        save_total_limit=2,
        eval_strategy="steps" if has_validation else "no",
        eval_steps=t.save_steps,
        load_best_model_at_end=has_validation,
        metric_for_best_model=CHECKPOINT_SCORE if has_validation else None,
        greater_is_better=True,
        seed=t.seed,
        data_seed=t.seed,
        bf16=dtype == torch.bfloat16,
        use_cpu=not torch.cuda.is_available(),
        **{CHECKPOINTING_ARG: _gradient_checkpointing(config, longest)},
        train_sampling_strategy="group_by_length" if _groups_by_length(config) else "random",
        use_liger_kernel=_liger_kernel(t.liger_kernel),
        ddp_find_unused_parameters=False,  # every LoRA weight is used in each step: skip DDP's extra graph walk
        max_length=None,
        pad_to_multiple_of=None if torch.cuda.is_available() else CPU_PAD_MULTIPLE,
        completion_only_loss=True,
        report_to="none",  # trackers are attached as callbacks (smalltune.tracking)
        dataloader_num_workers=0,
        disable_tqdm=False,
    )


def _groups_by_length(config: TaskConfig) -> bool:
    """train.group_by_length, where a forward pass holds several examples (one alone pads to no other's length)."""
    return config.train.group_by_length and micro_batch_size(config) > 1


def prepare_dataset(tokenizer, task, records: list[Record], config: TaskConfig, what: str) -> Dataset:
    """Records to the tokenised dataset the trainer reads: prompt + answer ids and the answer mask (with
    train.loss: choices, each record's choices and gold index too)."""
    examples = _encode(tokenizer, task, records, config, what)
    choices = choice_columns(tokenizer, task, [e.record for e in examples]) if config.train.loss == "choices" else None
    return _dataset(examples, choices)


def speed_choices(config: TaskConfig, args: SFTConfig) -> list[str]:
    """Each choice that sets the run's speed and memory, with the task-file key that overrides it."""
    t = config.train
    return [
        f"{'logits at labelled positions only' if t.logits == 'labelled' else 'TRL loss'} (train.logits={t.logits})",
        f"{'each candidate scored after the prompt' if t.loss == 'choices' else 'the answer tokens'} in the loss "
        f"(train.loss={t.loss})",
        f"gradient checkpointing {'on' if args.gradient_checkpointing else 'off'} "
        f"(train.gradient_checkpointing={t.gradient_checkpointing})",
        f"{'bf16 autocast' if args.bf16 else 'no autocast'} (model.dtype={config.model.dtype})",
        f"LoRA dropout {config.lora.dropout:g}"
        f"{', LoRA inputs left in bf16' if uncast_lora_inputs(config, torch.bfloat16 if args.bf16 else torch.float32) else ''}"
        " (lora.dropout)",
        f"batches' shared prompt opening run {'once' if shares_prefix(config, args) else 'in every row'} "
        f"(train.share_prefix={t.share_prefix})",
        f"{args.per_device_train_batch_size} example(s) per forward pass, "
        f"{args.gradient_accumulation_steps} pass(es) per optimizer step (train.micro_batch={t.micro_batch})",
        f"{'length-grouped' if _groups_by_length(config) else 'random'} batches (train.group_by_length={t.group_by_length})",
        f"Liger kernels {'on' if args.use_liger_kernel else 'off'} (train.liger_kernel={t.liger_kernel})",
        f"{args.world_size} process(es), {args.world_size * args.per_device_train_batch_size * args.gradient_accumulation_steps} "
        "examples per optimizer step",
    ]


def build_trainer(config: TaskConfig) -> SFTTrainer:
    """Data, model and LoRA wired into a ready-to-run SFTTrainer (the run directory is created)."""
    run = RunDir.of(config)
    main_process = is_main_process()
    if main_process:
        run.path.mkdir(parents=True, exist_ok=True)
    task = build_task(config)
    splits = load_splits(config.data, check=task.check)
    if splits.problems and main_process:
        atomic_write_text(run.invalid_records, "\n".join(splits.problems) + "\n")
        log.warning("%d invalid record(s) left out; see %s", len(splits.problems), run.invalid_records)
    if not splits.train:
        raise DataError(f"{config.data.train}: no valid training records")
    if main_process:
        save_config(config, run.task_file)

    model_path = resolve_model(config.model.name)
    dtype = choose_dtype(config.model.dtype)
    tokenizer = load_tokenizer(model_path, config.model.chat_template)
    train_set = prepare_dataset(tokenizer, task, splits.train, config, "training")
    eval_set = prepare_dataset(tokenizer, task, splits.validation, config, "validation") if splits.validation else None
    model = load_model(model_path, dtype)
    log.info("model %s, dtype %s, %d training / %d validation examples", model_path, dtype, len(train_set), len(eval_set or []))
    lora = config.lora
    args = sft_config(config, dtype, eval_set is not None, max(len(ids) for ids in train_set["input_ids"]))
    if config.train.loss == "choices" and (args.gradient_checkpointing or args.world_size > 1):
        raise ConfigError("train.loss: choices scores each example's choices in extra passes through the KV cache: "
                          "it runs in one process without gradient checkpointing (set train.gradient_checkpointing: "
                          "off, or train.loss: answer)")
    trainer = SmalltuneTrainer(
        model=model,
        args=args,
        train_dataset=train_set,
        eval_dataset=eval_set,
        processing_class=tokenizer,
        peft_config=LoraConfig(
            r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
            target_modules=lora.target_modules, task_type="CAUSAL_LM",
        ),
        callbacks=[JsonLog(run.train_log), *tracker_callbacks(config, run)],
        labelled_logits=config.train.logits == "labelled",
        uncast_lora_inputs=uncast_lora_inputs(config, dtype),
        share_prefix=shares_prefix(config, args),
        choice_loss=config.train.loss == "choices",
    )
    log.info("speed settings: %s", "; ".join(speed_choices(config, trainer.args)))
    if splits.validation:
        trainer.add_callback(ValidationMetrics(config, splits.validation, trainer.log))
    return trainer


def save_run(trainer: SFTTrainer, run: RunDir, seconds: float) -> None:
    """Adapter, tokenizer and the training summary (loss history included) into the run directory."""
    if not trainer.is_world_process_zero():
        return
    trainer.save_model(str(run.adapter))
    trainer.processing_class.save_pretrained(run.adapter)
    atomic_write_json(
        run.train_summary,
        {
            "base_model": trainer.model.peft_config["default"].base_model_name_or_path,
            "dtype": str(trainer.model.dtype).removeprefix("torch."),
            "train_examples": len(trainer.train_dataset),
            "validation_examples": len(trainer.eval_dataset or []),
            "seconds": round(seconds, 1),
            "history": trainer.state.log_history,
        },
    )


def _clear_previous_run(run: RunDir) -> None:
    """A new run in a used run directory replaces the last one's checkpoints and log (it would append to them)."""
    previous = [path for path in (run.checkpoints, run.train_log) if path.exists()]
    if previous:
        log.warning("%s holds an earlier run: starting afresh (`train --resume` continues it instead)", run.path)
    for path in previous:
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink()


def last_checkpoint(run: RunDir) -> Path | None:
    """The run's newest whole checkpoint. The trainer state is saved last, so a checkpoint without one was cut
    short by a kill (its weights or optimizer may be missing) and is passed over."""
    whole: dict[int, Path] = {}
    for path in run.checkpoints.glob(f"{PREFIX_CHECKPOINT_DIR}-*"):
        step = path.name.removeprefix(f"{PREFIX_CHECKPOINT_DIR}-")
        if step.isdigit() and (path / TRAINER_STATE_NAME).is_file():
            whole[int(step)] = path
    return whole[max(whole)] if whole else None


def train(config: TaskConfig, resume: bool = False) -> Path:
    """Fine-tune the task's model with LoRA; returns the run directory.

    With `resume` it continues from the run directory's last whole checkpoint (`last_checkpoint`); without, an
    earlier run's checkpoints and log there are replaced.
    """
    run = RunDir.of(config)
    if not resume and is_main_process():
        _clear_previous_run(run)
    trainer = build_trainer(config)
    checkpoint = last_checkpoint(run) if resume else None
    started = time.time()
    trainer.train(resume_from_checkpoint=str(checkpoint) if checkpoint else None)
    save_run(trainer, run, time.time() - started)
    return run.path
