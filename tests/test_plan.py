"""`smalltune plan`: memory estimates that follow the settings, parameter counts of the real architectures, and
activation figures that match what autograd really keeps."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from peft import LoraConfig, get_peft_model
from peft.helpers import disable_input_dtype_casting
from transformers import AutoModelForCausalLM, Qwen3Config
from typer.testing import CliRunner

from smalltune.cli import app
from smalltune.config import LoraSettings
from smalltune.training.memory import QWEN3_SIZES, Settings, architecture, estimate, qwen3_config

LORA = LoraSettings()


def test_the_estimate_grows_with_batch_and_max_length():
    arch = architecture("Qwen3-0.6B", qwen3_config("Qwen3-0.6B"), LORA)
    base = Settings(batch_size=2, max_length=256, weight_bytes=2, lora_dropout=0.1)
    small = estimate(arch, base)
    for bigger in (dataclasses.replace(base, batch_size=8), dataclasses.replace(base, max_length=1024)):
        large = estimate(arch, bigger)
        assert large.weights == small.weights and large.lora == small.lora
        assert large.activations > 3 * small.activations
        assert large.activations_checkpointed > small.activations_checkpointed
        assert large.total(checkpointing=False) > large.total(checkpointing=True) > small.total(checkpointing=True)
    assert estimate(arch, dataclasses.replace(base, weight_bytes=4)).weights == 2 * small.weights


@pytest.mark.parametrize("name", list(QWEN3_SIZES))
def test_parameter_counts_match_the_model_built_on_the_meta_device(name):
    arch = architecture(name, qwen3_config(name), LORA)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(qwen3_config(name))
    peft_model = get_peft_model(model, LoraConfig(r=LORA.r, lora_alpha=LORA.alpha, target_modules=LORA.target_modules))
    trainable, total = peft_model.get_nb_trainable_parameters()
    assert (arch.lora_params, arch.params) == (trainable, total - trainable)
    published = {"Qwen3-0.6B": 0.596e9, "Qwen3-1.7B": 1.72e9, "Qwen3-4B": 4.02e9}[name]  # tied embeddings
    assert arch.params == pytest.approx(published, rel=0.005)


def saved_activation_bytes(model, input_ids, attention_mask, autocast: bool, uncast: bool = False) -> int:
    """Bytes of the distinct tensors autograd keeps for the backward pass (weights excluded); `uncast`: the LoRA
    inputs left in bf16, as smalltune's training steps run without dropout."""
    kept: dict[int, int] = {}

    def pack(tensor):
        storage = tensor.untyped_storage()
        kept[storage.data_ptr()] = storage.nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor), \
            torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast), \
            disable_input_dtype_casting(model, active=uncast):
        model(input_ids=input_ids, attention_mask=attention_mask, logits_to_keep=torch.zeros_like(attention_mask).bool())
    weights = {p.untyped_storage().data_ptr() for p in model.parameters()}
    return sum(size for pointer, size in kept.items() if pointer not in weights)


@pytest.mark.parametrize(("dtype", "dropout"), [(torch.bfloat16, 0.1), (torch.bfloat16, 0.0), (torch.float32, 0.1)])
def test_activation_estimate_matches_what_autograd_keeps(dtype, dropout):
    config = Qwen3Config(vocab_size=512, hidden_size=192, intermediate_size=640, num_hidden_layers=3,
                         num_attention_heads=6, num_key_value_heads=2, head_dim=32, tie_word_embeddings=True)
    lora = LoraSettings(dropout=dropout)
    torch.manual_seed(0)
    model = get_peft_model(
        AutoModelForCausalLM.from_config(config).to(dtype),
        LoraConfig(r=lora.r, lora_alpha=lora.alpha, lora_dropout=dropout, target_modules=lora.target_modules),
    ).train()
    batch, length = 3, 96
    attention_mask = torch.ones(batch, length, dtype=torch.long)
    attention_mask[1:, 80:] = 0  # padded rows, as in a real batch
    autocast = dtype == torch.bfloat16
    measured = saved_activation_bytes(
        model, torch.randint(0, 512, (batch, length)), attention_mask, autocast, uncast=autocast and dropout == 0
    )

    settings = Settings(batch_size=batch, max_length=length, weight_bytes=dtype.itemsize, lora_dropout=dropout)
    estimated = estimate(architecture("tiny", config, lora), settings).activations
    assert estimated == pytest.approx(measured, rel=0.15)


def test_plan_command_prints_every_model_and_whether_it_fits(tmp_path, tiny_qwen3_dir, monkeypatch):
    import smalltune.cli

    monkeypatch.setattr(smalltune.cli.console, "size", (200, 50))  # a wide terminal, whatever ran before
    task = tmp_path / "task.yaml"
    task.write_text(f"name: t\nkind: chat\ndata: {{train: train.jsonl}}\nmodel: {{name: {tiny_qwen3_dir}}}\n"
                    "train: {batch_size: 8}\n", encoding="utf-8")
    result = CliRunner().invoke(app, ["plan", str(task), "--gpu-gib", "16"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    rows = {line.split("│")[1].strip(): line for line in result.output.splitlines() if line.count("│") > 5}
    assert set(rows) == {str(tiny_qwen3_dir), "Qwen3-0.6B", "Qwen3-1.7B", "Qwen3-4B"}
    assert rows["Qwen3-0.6B"].rstrip(" │").endswith("yes")
    assert rows["Qwen3-4B"].rstrip(" │").endswith(("with checkpointing", "no"))
    assert "batch 8 x 512 tokens" in result.output
