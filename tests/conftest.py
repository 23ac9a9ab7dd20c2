"""Shared fixtures: the real offline tokenizer, and a tiny random-weight Qwen3 model built from a config."""

from __future__ import annotations

import json
import os
from importlib import resources
from pathlib import Path

import pytest
from hypothesis import settings

# property tests draw the same examples on every run: a failure in CI is one a developer can reproduce
settings.register_profile("smalltune", derandomize=True)
settings.load_profile("smalltune")

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


@pytest.fixture
def one_thread():
    """Torch on one CPU thread in this process for the test, as the subprocesses it compares with run."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def default_model_dir() -> str:
    """The offline default model (Qwen2.5-Coder-0.5B-Instruct), converted from its GGUF parts once."""
    from smalltune.models import resolve_model

    return resolve_model("default")


@pytest.fixture(scope="session")
def qwen_tokenizer(default_model_dir):
    from smalltune.models import load_tokenizer

    return load_tokenizer(default_model_dir)


@pytest.fixture(scope="session")
def qwen3_template() -> str:
    """Qwen3's chat template, as shipped in TRL's package."""
    return resources.files("trl").joinpath("chat_templates/qwen3.jinja").read_text(encoding="utf-8")


@pytest.fixture(scope="session")
def qwen3_tokenizer(default_model_dir, qwen3_template):
    from smalltune.models import load_tokenizer

    tokenizer = load_tokenizer(default_model_dir)
    tokenizer.chat_template = qwen3_template
    return tokenizer


def tiny_model_dir(root: Path, tokenizer, config) -> Path:
    """A random-weight model of `config` with the given tokenizer, saved under root."""
    import torch
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(config).save_pretrained(root)
    tokenizer.save_pretrained(root)
    return root


@pytest.fixture(scope="session")
def tiny_qwen2_dir(tmp_path_factory, qwen_tokenizer) -> Path:
    """A Qwen2 (q/k/v biases, untied output layer) with Qwen2.5's tokenizer and template (a default system prompt)."""
    from transformers import Qwen2Config

    config = Qwen2Config(
        vocab_size=151936, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=2048, rope_theta=1e6, tie_word_embeddings=False,
        eos_token_id=qwen_tokenizer.convert_tokens_to_ids("<|im_end|>"), pad_token_id=qwen_tokenizer.pad_token_id,
    )
    return tiny_model_dir(tmp_path_factory.mktemp("tiny-qwen2"), qwen_tokenizer, config)


@pytest.fixture(scope="session")
def tiny_qwen3_dir(tmp_path_factory, qwen3_tokenizer) -> Path:
    """A Qwen3-architecture model with random weights (2 layers, hidden 64) and the Qwen3 chat template."""
    import torch
    from transformers import AutoModelForCausalLM, Qwen3Config

    torch.manual_seed(0)
    config = Qwen3Config(
        vocab_size=len(qwen3_tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, head_dim=16, max_position_embeddings=2048,
        eos_token_id=qwen3_tokenizer.convert_tokens_to_ids("<|im_end|>"), pad_token_id=qwen3_tokenizer.pad_token_id,
        tie_word_embeddings=True,
    )
    out = tmp_path_factory.mktemp("tiny-qwen3")
    AutoModelForCausalLM.from_config(config).save_pretrained(out)
    qwen3_tokenizer.save_pretrained(out)
    return out


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


def make_run_dir(root: Path, model_dir: Path, kind: str = "extract", **settings) -> Path:
    """A run directory as `train` leaves it (task.yaml, adapter, tokenizer), with random non-zero LoRA weights.

    No training: the adapter is initialised at random so that it visibly changes the model's answers.
    `settings` override TaskConfig fields (e.g. infer={...}).
    """
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from smalltune.config import TaskConfig, save_config
    from smalltune.recipes.synth.complaints import FIELDS, generate_complaints
    from smalltune.runs import RunDir

    rows, _ = generate_complaints(n_train=12, n_test=1, seed=5)
    by_kind = {"extract": {"fields": FIELDS}, "classify": {"labels": ["投诉", "咨询", "表扬"]}, "chat": {"system": "你是客服。"}}
    config = TaskConfig(**{
        "name": f"tiny-{kind}", "kind": kind, **by_kind[kind],
        "data": {"train": write_jsonl(root / "train.jsonl", rows)},
        "model": {"name": str(model_dir), "max_length": 256, "dtype": "float32"},
        "infer": {"batch_size": 4, "max_new_tokens": 8}, "output_dir": root / "runs", **settings,
    })
    run = RunDir.of(config)
    save_config(config, run.task_file)
    torch.manual_seed(1)
    lora = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "down_proj"], init_lora_weights=False)
    tuned = get_peft_model(AutoModelForCausalLM.from_pretrained(model_dir), lora)
    tuned.save_pretrained(run.adapter)
    AutoTokenizer.from_pretrained(model_dir).save_pretrained(run.adapter)
    return config.run_dir


@pytest.fixture(scope="session")
def evaluated_tiny_run(tmp_path_factory, tiny_qwen3_dir):
    """A complaints run on the tiny Qwen3, as `train` then `eval` leave it: (run_dir, results per system).

    Trained 2 steps with 2 validation records (evaluated after each step, SwanLab offline, the default),
    then evaluated on 3 test records: the rules baseline, the untuned model zero- and 2-shot, the fine-tuned one.
    """
    from smalltune.config import TaskConfig
    from smalltune.evaluation.evaluate import evaluate_run
    from smalltune.recipes.synth.complaints import FIELDS, generate_complaints
    from smalltune.training.run import train

    root = tmp_path_factory.mktemp("tiny-run")
    rows, test_rows = generate_complaints(n_train=10, n_test=3, seed=2)
    config = TaskConfig(
        name="tiny-complaints", kind="extract", fields=FIELDS,
        data={"train": write_jsonl(root / "train.jsonl", rows), "test": write_jsonl(root / "test.jsonl", test_rows),
              "validation_share": 0.2},
        model={"name": str(tiny_qwen3_dir), "max_length": 256, "dtype": "float32"},
        train={"epochs": 1, "batch_size": 4, "learning_rate": 5e-3, "logging_steps": 1, "save_steps": 1},
        infer={"batch_size": 4, "max_new_tokens": 24}, eval={"few_shot": 2, "baselines": ["complaint-rules"]},
        output_dir=root / "runs",
    )
    run_dir = train(config)
    return run_dir, evaluate_run(run_dir)
