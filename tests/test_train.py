"""A tiny Qwen3 model trains, saves, reloads with the same logits, and resumes after a crash."""

from __future__ import annotations

import json

import pytest
import torch

from conftest import write_jsonl
from smalltune.config import TaskConfig
from smalltune.inference.transformers_engine import TransformersEngine as Engine
from smalltune.recipes.synth.complaints import FIELDS, generate_complaints
from smalltune.runs import RunDir
from smalltune.training.run import build_trainer, save_run, train


def tiny_config(tmp_path, model_dir, **train) -> TaskConfig:
    rows, _ = generate_complaints(n_train=16, n_test=2, seed=1)
    write_jsonl(tmp_path / "train.jsonl", rows)
    settings = {"epochs": 3, "learning_rate": 5e-3, "batch_size": 4, "logging_steps": 1, "save_steps": 4, **train}
    return TaskConfig(
        name="tiny", kind="extract", fields=FIELDS,
        data={"train": tmp_path / "train.jsonl", "validation_share": 0, "test_share": 0},
        model={"name": str(model_dir), "max_length": 256, "dtype": "float32"}, train=settings,
        infer={"batch_size": 4, "max_new_tokens": 8}, output_dir=tmp_path / "runs",
    )


def test_tiny_qwen3_trains_with_falling_loss_saves_and_reloads_with_the_same_logits(tmp_path, tiny_qwen3_dir):
    config = tiny_config(tmp_path, tiny_qwen3_dir)
    trainer = build_trainer(config)
    trainer.train()
    save_run(trainer, RunDir.of(config), 1.0)

    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    assert len(losses) >= 6 and sum(losses[-3:]) < sum(losses[:3])
    for name in ("adapter/adapter_config.json", "adapter/adapter_model.safetensors", "adapter/tokenizer.json",
                 "task.yaml", "train_summary.json", "train_log.jsonl"):
        assert (config.run_dir / name).is_file(), name
    summary = json.loads((config.run_dir / "train_summary.json").read_text())
    assert summary["train_examples"] == 16 and any("loss" in h for h in summary["history"])

    batch = torch.tensor([trainer.train_dataset[0]["input_ids"]])
    trained = trainer.model.eval()
    with torch.no_grad():
        expected = trained(input_ids=batch).logits.float()
        reloaded = Engine.from_run(config.run_dir)
        got = reloaded.model(input_ids=batch).logits.float()
        with reloaded.untuned():
            base = reloaded.model(input_ids=batch).logits.float()
    torch.testing.assert_close(got, expected, atol=1e-3, rtol=1e-3)
    assert (got - base).abs().max() > 1e-2  # the adapter changes the answer


def test_resume_continues_from_the_last_checkpoint(tmp_path, tiny_qwen3_dir):
    config = tiny_config(tmp_path, tiny_qwen3_dir, epochs=1, save_steps=2)
    trainer = build_trainer(config)
    trainer.args.max_steps = 2  # a run that "crashed" after its checkpoint at step 2
    trainer.train()
    assert (config.run_dir / "checkpoints" / "checkpoint-2").is_dir()

    train(config, resume=True)
    logged = [json.loads(line) for line in (config.run_dir / "train_log.jsonl").read_text().splitlines()]
    assert [e["step"] for e in logged if "loss" in e] == [1, 2, 3, 4]  # steps 1-2 ran once, before the "crash"
    assert (config.run_dir / "adapter" / "adapter_model.safetensors").is_file()

    train(config)  # a new run in the same directory: its log and checkpoints are its own
    logged = [json.loads(line) for line in (config.run_dir / "train_log.jsonl").read_text().splitlines()]
    assert [e["step"] for e in logged if "loss" in e] == [1, 2, 3, 4]
    assert sorted(p.name for p in (config.run_dir / "checkpoints").glob("checkpoint-*")) == ["checkpoint-2", "checkpoint-4"]


def test_a_training_file_with_no_valid_record_is_a_clear_error(tmp_path, tiny_qwen3_dir):
    from smalltune.errors import DataError

    config = tiny_config(tmp_path, tiny_qwen3_dir)
    write_jsonl(config.data.train, [{"input": "文本", "output": {"name": "x"}}])
    with pytest.raises(DataError, match="no valid training records"):
        build_trainer(config)
    assert "train.jsonl:1" in (config.run_dir / "invalid_records.txt").read_text()


def test_classify_validation_during_training_scores_the_labels(tmp_path, tiny_qwen3_dir):
    """The validation metrics come from the engine as eval answers: by scoring, so the calibration error is logged."""
    headlines = [("中超联赛第十轮战报", "体育"), ("央行宣布降准", "财经"), ("新款手机发布", "科技")] * 4
    rows = [{"id": f"r{i}", "input": text, "output": label} for i, (text, label) in enumerate(headlines)]
    config = TaskConfig(
        name="tiny-classify", kind="classify", labels=["体育", "财经", "科技"],
        data={"train": write_jsonl(tmp_path / "train.jsonl", rows), "validation_share": 0.25, "test_share": 0},
        model={"name": str(tiny_qwen3_dir), "max_length": 256, "dtype": "float32"},
        train={"epochs": 1, "batch_size": 3, "logging_steps": 1, "save_steps": 3, "report_to": "none"},
        infer={"batch_size": 4}, output_dir=tmp_path / "runs",
    )
    train(config)
    logged = [json.loads(line) for line in (config.run_dir / "train_log.jsonl").read_text().splitlines()]
    evaluated = [entry for entry in logged if "eval_accuracy" in entry]
    assert evaluated and all(0 <= entry["eval_ece"] <= 1 for entry in evaluated)
