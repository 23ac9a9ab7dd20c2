"""The same task file trains under torchrun: two CPU processes (gloo) match one process with the same global batch."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from conftest import write_jsonl
from smalltune.config import load_config
from smalltune.recipes.synth.complaints import FIELDS, generate_complaints
from smalltune.training.run import train


def task_file(path, model_dir, name: str, batch_size: int):
    task = {
        "name": name, "kind": "extract", "fields": FIELDS,
        "data": {"train": "train.jsonl", "validation_share": 0, "test_share": 0},
        "model": {"name": str(model_dir), "max_length": 256, "dtype": "float32"},
        "lora": {"dropout": 0.0},  # dropout draws differ per process
        "train": {"batch_size": batch_size, "learning_rate": 5e-3, "logging_steps": 1, "save_steps": 100,
                  "group_by_length": False, "report_to": "none"},
        "output_dir": "runs",
    }
    path.write_text(yaml.safe_dump(task, allow_unicode=True), encoding="utf-8")
    return path


def logged_steps(run_dir) -> list[dict]:
    lines = (run_dir / "train_log.jsonl").read_text(encoding="utf-8").splitlines()
    return [entry for entry in map(json.loads, lines) if "loss" in entry]


@pytest.mark.skipif(sys.platform != "linux", reason="torchrun with gloo on CPU")
def test_two_processes_train_like_one_with_the_same_global_batch(tmp_path, tiny_qwen3_dir):
    rows, _ = generate_complaints(n_train=16, n_test=1, seed=1)
    write_jsonl(tmp_path / "train.jsonl", rows)
    two = task_file(tmp_path / "ddp.yaml", tiny_qwen3_dir, "ddp", batch_size=2)
    one = task_file(tmp_path / "single.yaml", tiny_qwen3_dir, "single", batch_size=4)

    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--log-dir", str(tmp_path / "logs"),
               "--redirects", "3", "-m", "smalltune.cli", "train", str(two)]
    done = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=240)
    rank_logs = {rank: "".join(log.read_text() for log in (tmp_path / "logs").rglob(f"{rank}/std*.log")) for rank in (0, 1)}
    assert done.returncode == 0, done.stderr[-3000:] + rank_logs[0][-2000:] + rank_logs[1][-2000:]
    for log in rank_logs.values():
        assert "2 process(es), 4 examples per optimizer step" in " ".join(log.split())

    train(load_config(one))

    ddp_dir, single_dir = tmp_path / "runs" / "ddp", tmp_path / "runs" / "single"
    ddp_steps, single_steps = logged_steps(ddp_dir), logged_steps(single_dir)
    # rank 0 alone writes: each step logged once, and the run directory holds the usual files
    assert [e["step"] for e in ddp_steps] == [1, 2, 3, 4]
    for name in ("task.yaml", "adapter/adapter_model.safetensors", "adapter/tokenizer.json", "train_summary.json"):
        assert (ddp_dir / name).is_file(), name
    summary = json.loads((ddp_dir / "train_summary.json").read_text())
    assert summary["train_examples"] == 16
    # each step's loss is the mean over both ranks' halves of the batch: it matches one process over the whole batch
    for ddp, single in zip(ddp_steps, single_steps, strict=True):
        assert ddp["loss"] == pytest.approx(single["loss"], rel=1e-4)
        assert ddp["grad_norm"] == pytest.approx(single["grad_norm"], rel=1e-3)
        assert ddp["num_tokens"] == single["num_tokens"]
    assert ddp_steps[-1]["loss"] < ddp_steps[0]["loss"]


@pytest.mark.parametrize("name", ["ddp", "ddp-cpu", "fsdp", "deepspeed-zero3"])
def test_the_example_accelerate_configs_load(name):
    from accelerate.commands.config.config_args import load_config_from_file

    examples = Path(__file__).resolve().parents[1] / "examples" / "distributed"
    config = load_config_from_file(str(examples / f"{name}.yaml"))
    assert config.num_processes >= 2 and config.mixed_precision in ("no", None)  # smalltune sets bf16 from model.dtype
    if config.deepspeed_config:
        ds_file = examples.parents[1] / config.deepspeed_config["deepspeed_config_file"]
        assert json.loads(ds_file.read_text())["zero_optimization"]["stage"] == 3
