"""The demo: synthetic complaints, the untuned model measured, a LoRA fine-tune, measured again."""

from __future__ import annotations

from collections.abc import Callable
from importlib import resources
from pathlib import Path

from smalltune.config import load_config
from smalltune.evaluate import SystemResult, evaluate_run
from smalltune.io import atomic_write_text
from smalltune.synth.complaints import write_complaints
from smalltune.train import train


def run_demo(
    work_dir: Path,
    n_train: int = 320,
    n_test: int = 100,
    log: Callable[[str], None] = print,
    on_batch: Callable[[int], None] | None = None,
) -> dict[str, SystemResult]:
    """Write data and task file into work_dir, train, evaluate; returns the results per system."""
    work_dir = Path(work_dir)
    train_path, test_path = write_complaints(work_dir / "data", n_train, n_test)
    log(f"data: {n_train} training records in {train_path}, {n_test} held-out in {test_path}")
    task_file = work_dir / "task.yaml"
    atomic_write_text(task_file, resources.files("smalltune.recipes").joinpath("complaints.yaml").read_text("utf-8"))
    config = load_config(task_file)
    log(f"fine-tuning {config.model.name} with LoRA: run directory {config.run_dir}")
    run_dir = train(config)
    log("measuring the untuned and the fine-tuned model on the held-out records")
    return evaluate_run(run_dir, on_batch=on_batch)
