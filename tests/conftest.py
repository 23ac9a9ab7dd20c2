"""Shared fixtures: the real offline tokenizer, and a tiny random-weight Qwen3 model built from a config."""

from __future__ import annotations

import json
import os
from importlib import resources
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


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
