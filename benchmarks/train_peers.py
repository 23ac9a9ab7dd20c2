"""Training side by side: smalltune, LLaMA-Factory and ms-swift on one LoRA job, each adapter then scored the same way.

The job is the complaints recipe's (src/smalltune/recipes/complaints.yaml) on its own generated data, the files that
`smalltune demo complaints --prepare-only --train-records 256 --test-records 100` writes:
  same records: the 256 training complaints (no validation split), the same local model folder;
  same prompts: smalltune's TaskKind.messages (instruction + input as the user turn, no system turn: each tool's
      Qwen2.5 template then adds the same default system prompt) and TaskKind.answer as the assistant turn,
      converted into each tool's format: sharegpt JSON + dataset_info.json (LLaMA-Factory), messages JSONL (ms-swift);
  same LoRA: r, alpha, dropout and target modules of the recipe;
  same optimisation: learning rate, batch, gradient accumulation, optimizer steps (`--steps`), cosine schedule with
      the recipe's warmup share as whole steps, seed, max length, bf16 where smalltune's dtype choice picks it;
  each tool's own Qwen2.5 chat template (LLaMA-Factory `template: qwen`, ms-swift `qwen2_5`, smalltune the
      model's) and its own answer-only loss.
Everything else is each tool's default, notably gradient checkpointing: on in LLaMA-Factory and ms-swift, smalltune's
`auto` (off where its memory plan fits); `--checkpointing on|off` sets it for all three. ms-swift also starts one
dataloader worker process by default. The optimizer steps are the same in all three; how a step's 4 examples go
through the model is each tool's choice: the peers run them as one padded batch, smalltune on a CPU one at a time
(`train.micro_batch: auto`), padded to a multiple of 32 tokens.

Each tool runs as one command in its own process (LLaMA-Factory and ms-swift in their venvs: `make setup-peers`),
one after another. Measured: the command's wall time; start-up = from the command's start to its first optimizer
step's log line; peak RSS of the process tree (polled every 0.2 s); the trainer's own training time (train_runtime);
real tokens/s = the training examples' token count (prompt + answer + end of turn with the Qwen2.5 template, no
padding, counted once for all tools by smalltune's tokenisation) x the epochs the steps cover / training time; the
final training loss (mean of the last 4 logged steps). Then every adapter (a PEFT folder) is put into a smalltune
run directory and scored by `smalltune.evaluation.evaluate.evaluate_run` on the same held-out complaints:
field exact, whole-record exact and valid JSON.

    make setup-peers && python benchmarks/train_peers.py                       # 64 steps: one epoch of 256 records
    python benchmarks/train_peers.py --tools smalltune,swift --steps 8 --json peers.json
    python benchmarks/train_peers.py --model /tmp/tiny-qwen2 --train-records 16 --steps 2 --eval-records 10  # smoke
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TOOLS = ("smalltune", "llamafactory", "swift")
VENVS = {"llamafactory": ROOT / ".venv-llamafactory", "swift": ROOT / ".venv-swift"}
PACKAGES = {"smalltune": "smalltune", "llamafactory": "llamafactory", "swift": "ms-swift"}
NAMES = {"smalltune": "smalltune", "llamafactory": "LLaMA-Factory", "swift": "ms-swift"}
LOSS_LINE = re.compile(r"""['"]loss['"]\s*:""")  # a trainer's log of one step ('train_loss' does not match)
OFFLINE = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "PYTHONUNBUFFERED": "1",
           "USE_HF": "1", "WANDB_MODE": "disabled"}


@dataclass(frozen=True)
class Job:
    """What every tool is asked to do."""

    model: str  # local model folder
    train_json: Path  # the training messages, one list per record (written by `prepare`)
    records: int
    steps: int
    batch: int
    accumulation: int
    learning_rate: float
    warmup_steps: int
    r: int
    alpha: int
    dropout: float
    targets: tuple[str, ...]
    max_length: int
    seed: int
    bf16: bool
    checkpointing: str  # default (each tool's own) | on | off

    @property
    def epochs(self) -> float:
        """The passes over the training records that the optimizer steps cover."""
        return self.steps * self.batch * self.accumulation / self.records


# --- the job, from the recipe ------------------------------------------------------------------


def benchmark_config(work: Path, model: str, n_train: int, n_test: int, checkpointing: str):
    """The complaints recipe's task file on its generated data (as `demo --prepare-only` writes it), with all
    training records trained on (no validation split), a log line per step and no tracker."""
    from smalltune.config import load_config, save_config
    from smalltune.recipes.demo import prepare_recipe

    recipe = load_config(prepare_recipe("complaints", work, n_train, n_test, log=lambda _: None))
    train = {"logging_steps": 1, "save_steps": 10**6, "report_to": "none"}
    if checkpointing != "default":
        train["gradient_checkpointing"] = checkpointing
    config = recipe.model_copy(update={
        "name": "smalltune",
        "data": recipe.data.model_copy(update={"validation_share": 0.0}),
        "model": recipe.model.model_copy(update={"name": model}),
        "train": recipe.train.model_copy(update=train),
        "eval": recipe.eval.model_copy(update={"baselines": [], "few_shot": 0}),
        "output_dir": work / "runs",
    })
    save_config(config, work / "smalltune.yaml")
    return config


def prepare(config, work: Path, steps: int | None, checkpointing: str) -> tuple[Job, int]:
    """The job's settings and training messages (smalltune's own rendering of each record), and the tokens of the
    training examples as smalltune tokenises them (prompt + answer + end of turn, the Qwen2.5 template)."""
    from smalltune.data.records import load_splits
    from smalltune.formatting import encode_examples
    from smalltune.models import choose_dtype, load_tokenizer, resolve_model
    from smalltune.tasks import build_task

    task = build_task(config)
    records = load_splits(config.data, check=task.check).train
    conversations = [[*task.messages(r), {"role": "assistant", "content": task.answer(r)}] for r in records]
    train_json = work / "train_messages.json"
    train_json.write_text(json.dumps(conversations, ensure_ascii=False, indent=0), encoding="utf-8")
    model = resolve_model(config.model.name)
    examples, problems = encode_examples(load_tokenizer(model), task, records, config.model.max_length, False)
    if problems:
        raise SystemExit("records that do not fit model.max_length:\n" + "\n".join(problems))
    t, lora = config.train, config.lora
    per_step = t.batch_size * t.gradient_accumulation
    steps = steps or math.ceil(len(records) / per_step)
    import torch

    job = Job(
        model=model, train_json=train_json, records=len(records), steps=steps, batch=t.batch_size,
        accumulation=t.gradient_accumulation, learning_rate=t.learning_rate,
        warmup_steps=math.ceil(t.warmup_ratio * steps), r=lora.r, alpha=lora.alpha, dropout=lora.dropout,
        targets=tuple(lora.target_modules), max_length=config.model.max_length, seed=t.seed,
        bf16=choose_dtype(config.model.dtype) == torch.bfloat16, checkpointing=checkpointing,
    )
    return job, sum(len(e.input_ids) for e in examples)


# --- each tool's command ---------------------------------------------------------------------------


def smalltune_command(job: Job, task_file: Path, recipe_file: Path) -> tuple[list[str], str]:
    """smalltune's trainer on the task file, stopped after the job's steps (a child of this script); by hand: the
    recipe's task file (the benchmark's copy only adds its logging settings and drops the validation split)."""
    command = [sys.executable, __file__, "--child-train", str(task_file), "--steps", str(job.steps)]
    text = recipe_file.read_text(encoding="utf-8")
    lines = sum(1 for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#"))
    return command, f"task file: {lines} YAML lines (the recipe's); records as written (alpaca JSONL)"


def llamafactory_command(job: Job, out: Path) -> tuple[list[str], str]:
    """llamafactory-cli train on a YAML file; the records as sharegpt JSON declared in dataset_info.json."""
    data = out / "data"
    data.mkdir(parents=True, exist_ok=True)
    conversations = json.loads(job.train_json.read_text(encoding="utf-8"))
    (data / "complaints.json").write_text(
        json.dumps([{"messages": c} for c in conversations], ensure_ascii=False), encoding="utf-8")
    info = {"complaints": {
        "file_name": "complaints.json", "formatting": "sharegpt", "columns": {"messages": "messages"},
        "tags": {"role_tag": "role", "content_tag": "content", "user_tag": "user", "assistant_tag": "assistant",
                 "system_tag": "system"}}}
    (data / "dataset_info.json").write_text(json.dumps(info, indent=2), encoding="utf-8")
    settings = {
        "model_name_or_path": job.model, "stage": "sft", "do_train": True, "finetuning_type": "lora",
        "lora_rank": job.r, "lora_alpha": job.alpha, "lora_dropout": job.dropout, "lora_target": ",".join(job.targets),
        "dataset": "complaints", "dataset_dir": str(data), "template": "qwen", "cutoff_len": job.max_length,
        "overwrite_cache": True, "output_dir": str(out / "output"), "overwrite_output_dir": True,
        "logging_steps": 1, "save_strategy": "no", "report_to": "none",
        "per_device_train_batch_size": job.batch, "gradient_accumulation_steps": job.accumulation,
        "learning_rate": job.learning_rate, "max_steps": job.steps, "lr_scheduler_type": "cosine",
        "warmup_steps": job.warmup_steps, "bf16": job.bf16, "seed": job.seed,
    }
    if job.checkpointing != "default":
        settings["disable_gradient_checkpointing"] = job.checkpointing == "off"
    if not _cuda():
        settings["use_cpu"] = True
    config = out / "train.yaml"
    config.write_text("".join(f"{k}: {json.dumps(v)}\n" for k, v in settings.items()), encoding="utf-8")
    info_lines = len(json.dumps(info, indent=2).splitlines())
    return ([str(VENVS["llamafactory"] / "bin" / "llamafactory-cli"), "train", str(config)],
            f"{len(settings)} YAML lines + dataset_info.json ({info_lines} lines); records to sharegpt JSON")


def swift_command(job: Job, out: Path) -> tuple[list[str], str]:
    """swift sft with flags; the records as messages JSONL."""
    data = out / "complaints.jsonl"
    out.mkdir(parents=True, exist_ok=True)
    conversations = json.loads(job.train_json.read_text(encoding="utf-8"))
    data.write_text("".join(json.dumps({"messages": c}, ensure_ascii=False) + "\n" for c in conversations),
                    encoding="utf-8")
    flags = {
        # model_type and template: ms-swift matches them by the folder's name, and a folder not named like the hub
        # model gets the `qwen` template, whose default system prompt differs
        "model": job.model, "model_type": "qwen2", "template": "qwen2_5", "use_hf": "true", "tuner_type": "lora",
        "dataset": str(data),
        "lora_rank": job.r, "lora_alpha": job.alpha, "lora_dropout": job.dropout, "target_modules": list(job.targets),
        "torch_dtype": "bfloat16" if job.bf16 else "float32", "bf16": str(job.bf16).lower(),
        "max_length": job.max_length, "per_device_train_batch_size": job.batch,
        "gradient_accumulation_steps": job.accumulation, "learning_rate": job.learning_rate,
        "max_steps": job.steps, "lr_scheduler_type": "cosine", "warmup_steps": job.warmup_steps,
        "logging_steps": 1, "save_only_model": "true", "report_to": "none", "seed": job.seed,
        "output_dir": str(out / "output"), "add_version": "false",
    }
    if job.checkpointing != "default":
        flags["gradient_checkpointing"] = str(job.checkpointing == "on").lower()
    if not _cuda():
        flags["use_cpu"] = "true"  # else transformers refuses bf16 without a GPU
    command = [str(VENVS["swift"] / "bin" / "swift"), "sft"]
    for key, value in flags.items():
        command += [f"--{key}", *(map(str, value) if isinstance(value, list) else [str(value)])]
    return command, f"{len(flags)} flags; records to messages JSONL"


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


# --- running and measuring one command ---------------------------------------------------------------


def run_measured(command: list[str], env: dict[str, str], log_file: Path) -> dict:
    """Runs the command to its end; its wall time, the time of its first step's log line, its tree's peak RSS."""
    import psutil

    started = time.perf_counter()
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, cwd=log_file.parent)
    peak, done = [0], threading.Event()

    def poll() -> None:
        root = psutil.Process(process.pid)
        while not done.is_set():
            try:
                tree = [root, *root.children(recursive=True)]
                total = 0
                for p in tree:
                    try:
                        total += p.memory_info().rss
                    except psutil.Error:
                        pass
                peak[0] = max(peak[0], total)
            except psutil.Error:
                pass
            done.wait(0.2)

    poller = threading.Thread(target=poll, daemon=True)
    poller.start()
    first_step = None
    with log_file.open("wb") as log:
        pending = b""
        while chunk := process.stdout.read1(65536):
            log.write(chunk)
            pending += chunk
            *lines, pending = re.split(rb"[\r\n]", pending)
            if first_step is None and any(LOSS_LINE.search(line.decode("utf-8", "replace")) for line in lines):
                first_step = time.perf_counter() - started
    code = process.wait()
    wall = time.perf_counter() - started
    done.set()
    poller.join()
    if code:
        tail = log_file.read_text(encoding="utf-8", errors="replace").splitlines()[-30:]
        raise RuntimeError(f"{' '.join(command[:2])} failed ({code}); the end of {log_file}:\n" + "\n".join(tail))
    return {"wall_seconds": wall, "startup_seconds": first_step, "peak_rss_gib": peak[0] / 2**30}


def training_logs(tool: str, out: Path) -> list[dict]:
    """The trainer's log entries (loss per step, then the run's summary with train_runtime)."""
    if tool == "smalltune":
        from smalltune.runs import RunDir

        return json.loads(RunDir(out).train_summary.read_text(encoding="utf-8"))["history"]
    if tool == "swift":  # every log line, the last one with train_runtime (the checkpoint's state has not that one)
        path = out / "output" / "logging.jsonl"
        return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    history = json.loads((out / "output" / "trainer_state.json").read_text(encoding="utf-8"))["log_history"]
    results = out / "output" / "train_results.json"
    return history + ([json.loads(results.read_text(encoding="utf-8"))] if results.is_file() else [])


def adapter_dir(tool: str, out: Path) -> Path:
    """The folder holding the trained adapter_config.json and adapter_model.safetensors."""
    if tool == "smalltune":
        from smalltune.runs import RunDir

        return RunDir(out).adapter
    found = sorted((out / "output").rglob("adapter_config.json"), key=lambda p: p.stat().st_mtime)
    if not found:
        raise RuntimeError(f"{out / 'output'}: no adapter_config.json written")
    return found[-1].parent


def train_numbers(logs: list[dict], tokens: float) -> dict:
    losses = [entry["loss"] for entry in logs if "loss" in entry]
    runtime = next((entry["train_runtime"] for entry in reversed(logs) if "train_runtime" in entry), None)
    return {
        "final_loss": sum(losses[-4:]) / len(losses[-4:]) if losses else None,
        "logged_steps": len(losses),
        "train_seconds": runtime,
        "tokens": tokens,
        "tokens_per_s": tokens / runtime if runtime else None,
    }


def tool_version(tool: str) -> str:
    python = sys.executable if tool == "smalltune" else str(VENVS[tool] / "bin" / "python")
    code = f"import importlib.metadata as m; print(m.version({PACKAGES[tool]!r}))"
    return subprocess.run([python, "-c", code], capture_output=True, text=True, check=True).stdout.strip()


# --- held-out quality -----------------------------------------------------------------------------


def peer_run_dir(config, tool: str, adapter: Path) -> Path:
    """A smalltune run directory whose adapter is the one `tool` trained (its weights and config), with the base
    model's tokenizer and template as smalltune saves them: `evaluate_run` then loads it like its own."""
    from smalltune.config import save_config
    from smalltune.models import load_tokenizer, resolve_model
    from smalltune.runs import RunDir

    peer = config.model_copy(update={"name": tool})
    run = RunDir.of(peer)
    shutil.rmtree(run.path, ignore_errors=True)
    run.adapter.mkdir(parents=True)
    save_config(peer, run.task_file)
    for name in ("adapter_config.json", "adapter_model.safetensors"):
        shutil.copy2(adapter / name, run.adapter / name)
    load_tokenizer(resolve_model(config.model.name)).save_pretrained(run.adapter)
    return run.path


def evaluate_child(run_dir: Path, limit: int | None) -> None:
    """The fine-tuned model of the run directory on its held-out records (no untuned pass, no baselines)."""
    from smalltune.evaluation.evaluate import evaluate_run

    evaluate_run(run_dir, limit=limit, untuned=False)


def quality(run_dir: Path, limit: int | None, env: dict[str, str]) -> dict:
    from smalltune.evaluation.report import TUNED
    from smalltune.runs import RunDir

    command = [sys.executable, __file__, "--child-eval", str(run_dir)]
    command += ["--eval-records", str(limit)] if limit else []
    subprocess.run(command, env=env, check=True)
    metrics = json.loads(RunDir(run_dir).metrics.read_text(encoding="utf-8"))["systems"][TUNED]["metrics"]
    return {key: metrics[key] for key in ("field_exact", "record_exact", "json_valid")}


# --- the child processes -------------------------------------------------------------------------------


def train_child(task_file: Path, steps: int) -> None:
    """smalltune's training run (`smalltune train`), stopped after `steps` optimizer steps."""
    import logging

    from smalltune.config import load_config
    from smalltune.runs import RunDir
    from smalltune.training.run import build_trainer, save_run

    logging.basicConfig(level=logging.INFO, format="%(message)s")  # as `smalltune train` logs (its speed settings)
    config = load_config(task_file)
    trainer = build_trainer(config)
    trainer.args.max_steps = steps
    started = time.time()
    trainer.train()
    save_run(trainer, RunDir.of(config), time.time() - started)


# --- the table --------------------------------------------------------------------------------------------


def _number(value, form: str) -> str:
    return "-" if value is None else form.format(value)


def print_table(results: dict[str, dict], job: Job, eval_records: int) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"LoRA on {Path(job.model).name}: {job.records} complaint records, {job.steps} optimizer steps "
                        f"of {job.batch}x{job.accumulation} ({job.epochs:g} epochs), then {eval_records} held-out")
    columns = ("tool", "tokens/s", "wall s", "start-up s", "peak RSS GiB", "final loss", "field exact",
               "whole record", "valid JSON", "by hand")
    for column in columns:
        table.add_column(column, justify="left" if column in ("tool", "by hand") else "right")
    for tool, r in results.items():
        if "skipped" in r:
            table.add_row(r["name"], *["-"] * 8, r["skipped"])
            continue
        table.add_row(
            f"{r['name']} {r['version']}", _number(r["tokens_per_s"], "{:.1f}"), _number(r["wall_seconds"], "{:.0f}"),
            _number(r["startup_seconds"], "{:.0f}"), _number(r["peak_rss_gib"], "{:.2f}"),
            _number(r["final_loss"], "{:.3f}"), _number(r.get("field_exact"), "{:.3f}"),
            _number(r.get("record_exact"), "{:.3f}"), _number(r.get("json_valid"), "{:.3f}"), r["by_hand"])
    Console(width=200).print(table)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tools", default=",".join(TOOLS), help="comma-separated, of: " + ", ".join(TOOLS))
    parser.add_argument("--steps", type=int, help="optimizer steps (default: one epoch of the training records)")
    parser.add_argument("--model", default="default",
                        help="default (Qwen2.5-Coder-0.5B-Instruct) or a local model folder")
    parser.add_argument("--train-records", type=int, default=256)
    parser.add_argument("--test-records", type=int, default=100)
    parser.add_argument("--eval-records", type=int, help="score only the first N held-out records (default: all)")
    parser.add_argument("--checkpointing", choices=("default", "on", "off"), default="default",
                        help="gradient checkpointing: each tool's default, or on / off for all")
    parser.add_argument("--work-dir", type=Path, default=ROOT / "runs" / "train-peers",
                        help="data, configs, logs, adapters and run directories (an earlier run there is replaced)")
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument("--child-train", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--child-eval", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.child_train:
        return train_child(args.child_train, args.steps)
    if args.child_eval:
        return evaluate_child(args.child_eval, args.eval_records)

    tools = [t.strip() for t in args.tools.split(",") if t.strip()]
    unknown = set(tools) - set(TOOLS)
    if unknown:
        parser.error(f"unknown tool(s) {', '.join(sorted(unknown))}; choose from {', '.join(TOOLS)}")
    missing = [str(VENVS[t]) for t in tools if t in VENVS and not (VENVS[t] / "bin" / "python").exists()]
    if missing:
        parser.error(f"no {', '.join(missing)}: run `make setup-peers` first")

    work = args.work_dir.resolve()
    if work.is_dir() and any(work.iterdir()) and not (work / "smalltune.yaml").is_file():
        parser.error(f"{work} holds other files: give an empty or new --work-dir")
    shutil.rmtree(work, ignore_errors=True)  # an earlier run of this benchmark
    work.mkdir(parents=True)
    config = benchmark_config(work, args.model, args.train_records, args.test_records, args.checkpointing)
    job, tokens_per_epoch = prepare(config, work, args.steps, args.checkpointing)
    tokens = tokens_per_epoch * job.epochs
    base_env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env = {**base_env, **OFFLINE, "HF_DATASETS_CACHE": str(work / "datasets-cache")}
    if not _cuda():
        env["CUDA_VISIBLE_DEVICES"] = ""
    ours = {**os.environ, **OFFLINE}  # this venv's Python (with PYTHONPATH as this script was given)

    results: dict[str, dict] = {}
    for tool in tools:
        out = work / tool
        out.mkdir(exist_ok=True)
        if tool == "smalltune":
            command, by_hand = smalltune_command(job, work / "smalltune.yaml", work / "task.yaml")
            run_out = Path(config.run_dir)
        else:
            command, by_hand = (llamafactory_command if tool == "llamafactory" else swift_command)(job, out)
            run_out = out
        print(f"[{tool}] {' '.join(command[:2])} ... (log: {out / 'train.log'})", flush=True)
        measured = run_measured(command, ours if tool == "smalltune" else env, out / "train.log")
        numbers = train_numbers(training_logs(tool, run_out), tokens)
        results[tool] = {"name": NAMES[tool], "version": tool_version(tool), "by_hand": by_hand,
                         "command": command, **measured, **numbers, "adapter": str(adapter_dir(tool, run_out))}
        print(f"[{tool}] {measured['wall_seconds']:.0f} s, final loss {_number(numbers['final_loss'], '{:.3f}')}",
              flush=True)
    for tool in tools:  # after all training, so that no evaluation runs beside a timed command
        adapter = Path(results[tool]["adapter"])
        run_dir = Path(config.run_dir) if tool == "smalltune" else peer_run_dir(config, tool, adapter)
        print(f"[{tool}] scoring {run_dir} ...", flush=True)
        results[tool].update(quality(run_dir, args.eval_records, ours))
    results["unsloth"] = {"name": "Unsloth", "skipped": "not run: needs an NVIDIA, AMD or Intel GPU"
                          + ("" if _cuda() else " (none here)")}
    eval_records = min(args.eval_records or args.test_records, args.test_records)
    print_table(results, job, eval_records)
    print(f"real tokens: {tokens_per_epoch:,} per epoch (prompt + answer + end of turn, no padding), "
          f"{tokens:,.0f} in {job.steps} steps; tokens/s = that / the trainer's train_runtime; start-up = the "
          "command's start to its first step's log line")
    if args.json:
        payload = {"job": {k: str(v) if isinstance(v, Path) else v for k, v in job.__dict__.items()},
                   "tokens_per_epoch": tokens_per_epoch, "eval_records": eval_records, "results": results}
        args.json.write_text(json.dumps(payload, indent=2, ensure_ascii=False), encoding="utf-8")


if __name__ == "__main__":
    main()
