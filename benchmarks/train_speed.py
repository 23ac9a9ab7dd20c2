"""Training benchmark: the seed recipe against smalltune's defaults, same model, data and optimizer steps.

Both fine-tune LoRA (r=8, alpha=32 on the 7 projections) on the same synthetic complaint records for the same
number of optimizer steps of 4 examples x 4 accumulation steps at learning rate 1e-4:
  (a) seed: the tokenizer called one example at a time in a per-example `datasets.map`, a hand-written Qwen
      chat-template f-string, prompt masked with -100, truncation to 1024 tokens from the end,
      DataCollatorForSeq2Seq(padding=True), LoRA dropout 0.1, gradient checkpointing on, bf16 weights, plain
      transformers Trainer.
      (transformers 5 has no slow tokenizer any more, `use_fast=False` is ignored: the loop is the closest;
      --seed-python times the same preparation with transformers 4's slow tokenizer, see seed_recipe.py.)
  (b) smalltune: smalltune.training.run.build_trainer with its defaults (model template, batched tokenisation,
      length-grouped batches, logits at answer positions only, each batch's shared prompt opening run once, LoRA
      dropout 0, gradient checkpointing and bf16
      autocast chosen for the machine, LoRA inputs left in bf16).
  (c) with --checkpointing-row: (b) with train.gradient_checkpointing: on (less memory, more time).
  (d) with --dropout-row: (b) with the seed's lora.dropout: 0.1 (a regulariser; a random mask over every LoRA input).
  (e) with --unshared-row: (b) with train.share_prefix: off (each row of a batch runs the prompt opening it shares
      with the others, instead of once per batch).
Each runs in its own process, so that its peak RSS is its own. Printed: data preparation examples/s, training
tokens/s (real tokens, padding excluded), padding share, peak RSS, wall time and final training loss.

    python benchmarks/train_speed.py                                        # default model, 16 steps
    python benchmarks/train_speed.py --model smollm2-135m --steps 2 --records 32   # a quick check
    python benchmarks/train_speed.py --checkpointing-row --dropout-row      # adds (c) and (d)
    make setup-seed && python benchmarks/train_speed.py --seed-python .venv-seed/bin/python   # + the slow tokenizer
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from seed_recipe import MAX_LENGTH, seed_process_func

BATCH, ACCUMULATION, LEARNING_RATE = 4, 4, 1e-4
LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


class CountingCollator:
    """Wraps a data collator and counts the real (attention-mask) and padded tokens of every batch it builds."""

    def __init__(self, collate):
        self.collate, self.real, self.padded = collate, 0, 0

    def __call__(self, features):
        batch = self.collate(features)
        self.real += int(batch["attention_mask"].sum())
        self.padded += batch["attention_mask"].numel()
        return batch


def final_loss(log_history: list[dict]) -> float:
    """Mean training loss of the last four logged optimizer steps."""
    losses = [entry["loss"] for entry in log_history if "loss" in entry]
    return sum(losses[-4:]) / len(losses[-4:])


def task_config(records_file: Path, model: str, out_dir: Path, checkpointing: str = "auto", dropout: float | None = None,
                share_prefix: str = "auto"):
    """The complaint extraction task at the benchmark's optimisation settings; everything else smalltune's defaults."""
    from smalltune.config import TaskConfig
    from smalltune.recipes.synth.complaints import FIELDS

    return TaskConfig(
        name="bench", kind="extract", fields=FIELDS,
        data={"train": records_file, "validation_share": 0, "test_share": 0},
        model={"name": model, "max_length": MAX_LENGTH},
        lora={} if dropout is None else {"dropout": dropout},
        train={"batch_size": BATCH, "gradient_accumulation": ACCUMULATION, "learning_rate": LEARNING_RATE,
               "logging_steps": 1, "save_steps": 10**6, "report_to": "none", "gradient_checkpointing": checkpointing,
               "share_prefix": share_prefix},
        output_dir=out_dir,
    )


def seed_rows(records_file: Path, model: str, out_dir: Path) -> list[dict]:
    """The same instruction and answer text smalltune trains on, in the seed's instruction/input/output columns."""
    from smalltune.data.records import load_splits
    from smalltune.tasks import build_task

    config = task_config(records_file, model, out_dir)
    task = build_task(config)
    return [{"instruction": task.default_instruction(r) + "\n\n", "input": r.input, "output": task.answer(r)}
            for r in load_splits(config.data).train]


def slow_tokenizer_prep(seed_python: Path, records_file: Path, model: str, out_dir: Path) -> dict:
    """The seed's preparation with transformers 4's slow tokenizer (in `seed_python`), and whether its ids equal
    the fast tokenizer's for every example."""
    from transformers import AutoTokenizer

    from smalltune.models import resolve_model

    rows = seed_rows(records_file, model, out_dir)
    rows_file, result_file = out_dir / "seed_rows.jsonl", out_dir / "seed_slow.json"
    rows_file.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    model_dir = resolve_model(model)
    subprocess.run([str(seed_python), str(Path(__file__).with_name("seed_recipe.py")), str(model_dir),
                    str(rows_file), str(result_file)], check=True)
    result = json.loads(result_file.read_text(encoding="utf-8"))
    fast = seed_process_func(AutoTokenizer.from_pretrained(model_dir), MAX_LENGTH)
    same = sum(fast(row)["input_ids"] == ids for row, ids in zip(rows, result["input_ids"]))
    return {"tokenizer": result["tokenizer"], "examples_per_s": result["examples_per_s"],
            "same_ids": f"{same}/{len(rows)}"}


def run_seed(records_file: Path, model: str, steps: int, out_dir: Path) -> dict:
    """Recipe (a), written the way the seed tutorials write it."""
    import torch
    from datasets import Dataset
    from peft import LoraConfig, TaskType, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer, DataCollatorForSeq2Seq, Trainer, TrainingArguments

    from smalltune.models import resolve_model

    rows = seed_rows(records_file, model, out_dir)
    model_dir = resolve_model(model)
    tokenizer = AutoTokenizer.from_pretrained(model_dir, use_fast=False)  # transformers 5: the fast one all the same
    process_func = seed_process_func(tokenizer, MAX_LENGTH)

    started = time.perf_counter()
    raw = Dataset.from_list(rows)
    dataset = raw.map(process_func, remove_columns=raw.column_names)
    prep_seconds = time.perf_counter() - started

    base = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.bfloat16)
    base.enable_input_require_grads()
    lora = LoraConfig(task_type=TaskType.CAUSAL_LM, target_modules=LORA_TARGETS, inference_mode=False,
                      r=8, lora_alpha=32, lora_dropout=0.1)
    args = TrainingArguments(
        output_dir=str(out_dir / "seed"), per_device_train_batch_size=BATCH, gradient_accumulation_steps=ACCUMULATION,
        logging_steps=1, max_steps=steps, learning_rate=LEARNING_RATE, gradient_checkpointing=True,
        save_strategy="no", report_to="none", seed=42, disable_tqdm=True,
    )
    collator = CountingCollator(DataCollatorForSeq2Seq(tokenizer=tokenizer, padding=True))
    trainer = Trainer(model=get_peft_model(base, lora), args=args, train_dataset=dataset, data_collator=collator)
    return _train_and_measure(trainer, collator, len(rows), prep_seconds)


def run_smalltune(records_file: Path, model: str, steps: int, out_dir: Path, checkpointing: str = "auto",
                  dropout: float | None = None, share_prefix: str = "auto") -> dict:
    """Recipe (b): smalltune's own preparation and trainer ((c): with gradient checkpointing on; (d): with the
    seed's LoRA dropout; (e): with every row's prompt opening run in full)."""
    from smalltune.data.records import load_splits
    from smalltune.models import load_tokenizer, resolve_model
    from smalltune.tasks import build_task
    from smalltune.training.run import build_trainer, prepare_dataset

    config = task_config(records_file, model, out_dir, checkpointing, dropout, share_prefix)
    task = build_task(config)
    records = load_splits(config.data, check=task.check).train
    tokenizer = load_tokenizer(resolve_model(model))
    started = time.perf_counter()
    prepare_dataset(tokenizer, task, records, config, "training")
    prep_seconds = time.perf_counter() - started

    trainer = build_trainer(config)
    trainer.args.max_steps = steps
    trainer.args.disable_tqdm = True
    collator = trainer.data_collator = CountingCollator(trainer.data_collator)
    return {**_train_and_measure(trainer, collator, len(records), prep_seconds),
            "tokenizer_examples_per_s": tokenizer_ceiling(tokenizer, task, records)}


def tokenizer_ceiling(tokenizer, task, records) -> float:
    """Examples/s of the fast tokenizer alone, one batch call over the finished texts (prompt + answer + end of
    turn, rendered beforehand): the most that any preparation which tokenizes can reach on this machine."""
    from smalltune.formatting import end_of_turn, render_prompt

    texts = [render_prompt(tokenizer, task.messages(r), False) + task.answer(r) + end_of_turn(tokenizer) for r in records]
    started = time.perf_counter()
    tokenizer(texts, add_special_tokens=False)
    return len(texts) / (time.perf_counter() - started)


def _train_and_measure(trainer, collator: CountingCollator, examples: int, prep_seconds: float) -> dict:
    started = time.perf_counter()
    trainer.train()
    train_seconds = time.perf_counter() - started
    return {
        "prep_examples_per_s": examples / prep_seconds,
        "train_tokens_per_s": collator.real / train_seconds,
        "train_tokens": collator.real,
        "padding_share": 1 - collator.real / collator.padded,
        "train_seconds": train_seconds,
        "final_loss": final_loss(trainer.state.log_history),
        "peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
    }


def run_child(recipe: str, records_file: Path, model: str, steps: int, out_dir: Path) -> dict:
    """One recipe in a fresh process; its numbers, and the process's wall time."""
    started = time.perf_counter()
    command = [sys.executable, __file__, "--recipe", recipe, "--records-file", str(records_file), "--model", model,
               "--steps", str(steps), "--out", str(out_dir)]
    subprocess.run(command, check=True)
    result = json.loads((out_dir / f"{recipe}.json").read_text())
    return {**result, "wall_seconds": time.perf_counter() - started}


RECIPES = {
    "seed": ("(a) seed recipe", run_seed),
    "smalltune": ("(b) smalltune", run_smalltune),
    "smalltune-checkpointing": ("(c) smalltune, checkpointing on", lambda *a: run_smalltune(*a, checkpointing="on")),
    "smalltune-dropout": ("(d) smalltune, LoRA dropout 0.1", lambda *a: run_smalltune(*a, dropout=0.1)),
    "smalltune-unshared": ("(e) smalltune, share_prefix off", lambda *a: run_smalltune(*a, share_prefix="off")),
}


def print_table(results: dict[str, dict], title: str) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title)
    table.add_column("")
    for name in results:
        table.add_column(RECIPES[name][0], justify="right")
        if name != "seed":
            table.add_column(f"{RECIPES[name][0][:3]} / (a)", justify="right")
    rows = [("data preparation, examples/s", "prep_examples_per_s", "{:,.0f}"),
            ("training, real tokens/s", "train_tokens_per_s", "{:,.1f}"),
            ("padding share of batch tokens", "padding_share", "{:.1%}"),
            ("training time, s", "train_seconds", "{:,.0f}"),
            ("peak RSS, GiB", "peak_rss_gib", "{:.2f}"),
            ("wall time, s", "wall_seconds", "{:,.0f}"),
            ("final training loss (last 4 steps)", "final_loss", "{:.3f}")]
    seed = results["seed"]
    for label, key, number in rows:
        cells = []
        for name, result in results.items():
            cells.append(number.format(result[key]))
            if name != "seed":
                cells.append(f"{result[key] / seed[key]:.2f}x" if seed[key] else "-")
        table.add_row(label, *cells)
    Console(width=140).print(table)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="default", help="default (Qwen2.5-Coder-0.5B) or smollm2-135m, or a model dir")
    parser.add_argument("--steps", type=int, default=16, help="optimizer steps of 16 examples each")
    parser.add_argument("--records", type=int, default=256, help="synthetic complaint records")
    parser.add_argument("--checkpointing-row", action="store_true",
                        help="also run (c): smalltune with gradient checkpointing on (less memory, slower)")
    parser.add_argument("--dropout-row", action="store_true",
                        help="also run (d): smalltune with the seed's LoRA dropout 0.1 (its default is 0)")
    parser.add_argument("--unshared-row", action="store_true",
                        help="also run (e): smalltune with train.share_prefix off (each row runs its prompt opening)")
    parser.add_argument("--seed-python", type=Path,
                        help="a Python with transformers 4 (make setup-seed: .venv-seed/bin/python): also time (a)'s "
                        "preparation with the seeds' slow tokenizer (Qwen2 models)")
    parser.add_argument("--recipe", choices=list(RECIPES), help=argparse.SUPPRESS)
    parser.add_argument("--records-file", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.recipe:  # a child process: one recipe, numbers to a JSON file
        result = RECIPES[args.recipe][1](args.records_file, args.model, args.steps, args.out)
        (args.out / f"{args.recipe}.json").write_text(json.dumps(result), encoding="utf-8")
        return

    from smalltune.models import resolve_model
    from smalltune.recipes.synth.complaints import generate_complaints

    resolve_model(args.model)  # convert a packaged GGUF model once, outside the timed children
    with tempfile.TemporaryDirectory() as tmp:
        out_dir = Path(tmp)
        rows, _ = generate_complaints(n_train=args.records, n_test=0, seed=0)
        records_file = out_dir / "train.jsonl"
        records_file.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
        recipes = ["seed", "smalltune"] + ["smalltune-checkpointing"] * args.checkpointing_row \
            + ["smalltune-dropout"] * args.dropout_row + ["smalltune-unshared"] * args.unshared_row
        slow = args.seed_python and slow_tokenizer_prep(args.seed_python, records_file, args.model, out_dir)
        results = {name: run_child(name, records_file, args.model, args.steps, out_dir) for name in recipes}
    print_table(results, f"LoRA training on {args.model}: {args.records} records, {args.steps} optimizer steps "
                                 f"of {BATCH}x{ACCUMULATION} examples")
    ceiling = results["smalltune"]["tokenizer_examples_per_s"]
    print(f"the fast tokenizer alone, one batch call over (b)'s finished texts: {ceiling:,.0f} examples/s "
          f"({ceiling / results['seed']['prep_examples_per_s']:,.0f}x (a)), the ceiling of any preparation here")
    if slow:
        ours = results["smalltune"]["prep_examples_per_s"]
        print(f"(a) with the seeds' slow tokenizer, {slow['tokenizer']} of transformers 4: "
              f"{slow['examples_per_s']:,.1f} examples/s ((b) prepares {ours / slow['examples_per_s']:,.0f}x as fast, "
              f"the tokenizer alone {ceiling / slow['examples_per_s']:,.0f}x); "
              f"token ids equal to the fast tokenizer's for {slow['same_ids']} examples")


if __name__ == "__main__":
    main()
