"""Memory figures before a run: the GPU memory LoRA training needs at the task's settings, part by part.

Parameters are counted on a model built on the meta device from its architecture config (no weights are
read or downloaded). Activations follow bytes-per-token-per-layer coefficients measured with saved-tensor
hooks on a LoRA'd Qwen3 decoder (transformers 5.24, peft 0.21; tests/test_plan.py measures them again).
The logits term is the vocabulary tiles of TRL's fused LM head, which on CUDA projects answer positions only.
Figures are estimates, good to about 20%: allocator slack and framework buffers come on top.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
from torch import nn
from transformers import AutoConfig, AutoModelForCausalLM, PretrainedConfig, Qwen3Config

from smalltune.config import LoraSettings, TaskConfig
from smalltune.errors import ModelError
from smalltune.models import resolve_model

log = logging.getLogger(__name__)

GIB = 2**30
CUDA_CONTEXT = GIB // 2  # the CUDA context and kernels, before any tensor
ADAMW_LORA_BYTES = 16  # per trainable parameter: fp32 weight, gradient and AdamW's two moments
FUSED_HEAD_ROWS, FUSED_HEAD_VOCAB = 4096, 32768  # tile of TRL's fused LM head (tokens x vocabulary)

# Public architecture numbers of the Qwen3 dense models (their config.json): vocabulary 151,936, tied embeddings.
QWEN3_SIZES: dict[str, dict[str, int]] = {
    "Qwen3-0.6B": {"hidden_size": 1024, "intermediate_size": 3072, "num_hidden_layers": 28,
                   "num_attention_heads": 16, "num_key_value_heads": 8, "head_dim": 128},
    "Qwen3-1.7B": {"hidden_size": 2048, "intermediate_size": 6144, "num_hidden_layers": 28,
                   "num_attention_heads": 16, "num_key_value_heads": 8, "head_dim": 128},
    "Qwen3-4B": {"hidden_size": 2560, "intermediate_size": 9728, "num_hidden_layers": 36,
                 "num_attention_heads": 32, "num_key_value_heads": 8, "head_dim": 128},
}


@dataclass(frozen=True)
class _PerToken:
    """Saved-activation bytes per token and layer: a * hidden + b * intermediate + c * q_dim + d * kv_dim + e."""

    hidden: float
    intermediate: float
    q_dim: float
    kv_dim: float
    constant: float = 0.0

    def __call__(self, arch: Architecture) -> float:
        return (self.hidden * arch.hidden + self.intermediate * arch.intermediate + self.q_dim * arch.q_dim
                + self.kv_dim * arch.kv_dim + self.constant)


# Measured per activation width: the layer itself, and what LoRA dropout adds. 16-bit without dropout: under
# autocast with the LoRA layers fed their 16-bit input, as smalltune's training steps do then (it is the tensor
# the base layer keeps anyway); with dropout and at 32 bits: peft's default, each LoRA input cast to the
# adapter's fp32 before its dropout.
_ACTIVATIONS = {
    2: (_PerToken(19, 8.4, 10.4, 8.3, 120), _PerToken(20, 4, 4, 0)),
    4: (_PerToken(16, 16, 12.1, 12.1, 232), _PerToken(32, 4, 8, 0)),
}
_UNCAST_16_BIT_LAYER = _PerToken(13.1, 8.1, 13.1, 4.3, 5.7)


@dataclass(frozen=True)
class Architecture:
    """The sizes that set a decoder's memory, and its parameter counts for a LoRA setting."""

    name: str
    params: int
    lora_params: int
    hidden: int
    intermediate: int
    layers: int
    q_dim: int
    kv_dim: int
    vocab: int


@dataclass(frozen=True)
class Settings:
    """The task settings that set training memory."""

    batch_size: int
    max_length: int
    weight_bytes: int  # 2 for bf16/fp16, 4 for fp32
    lora_dropout: float

    @classmethod
    def of(cls, config: TaskConfig) -> Settings:
        """From a task file; dtype 'auto' is bf16, as on any GPU since Ampere."""
        weight_bytes = 4 if config.model.dtype == "float32" else 2
        return cls(config.train.batch_size, config.model.max_length, weight_bytes, config.lora.dropout)


@dataclass(frozen=True)
class MemoryEstimate:
    """Estimated GPU memory (bytes) of one LoRA training step, part by part."""

    arch: Architecture
    weights: int
    lora: int
    activations: int
    activations_checkpointed: int
    logits: int

    def total(self, checkpointing: bool) -> int:
        """Everything, the CUDA context included, with gradient checkpointing on or off."""
        activations = self.activations_checkpointed if checkpointing else self.activations
        return self.weights + self.lora + activations + self.logits + CUDA_CONTEXT


def qwen3_config(name: str) -> Qwen3Config:
    """A Qwen3 architecture config from its public numbers (no download)."""
    return Qwen3Config(vocab_size=151_936, tie_word_embeddings=True, **QWEN3_SIZES[name])


def architecture(name: str, model_config: PretrainedConfig, lora: LoraSettings) -> Architecture:
    """Parameter counts from the model built on the meta device, and the sizes that set activation memory."""
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(model_config)
    targets = set(lora.target_modules)
    lora_params = sum(
        lora.r * (module.in_features + module.out_features)
        for module_name, module in model.named_modules()
        if isinstance(module, nn.Linear) and module_name.rsplit(".", 1)[-1] in targets
    )
    text = model.config.get_text_config()
    head_dim = getattr(text, "head_dim", None) or text.hidden_size // text.num_attention_heads
    return Architecture(
        name=name,
        params=sum(p.numel() for p in model.parameters()),  # tied weights are one parameter
        lora_params=lora_params,
        hidden=text.hidden_size,
        intermediate=text.intermediate_size,
        layers=text.num_hidden_layers,
        q_dim=text.num_attention_heads * head_dim,
        kv_dim=text.num_key_value_heads * head_dim,
        vocab=text.vocab_size,
    )


def estimate(arch: Architecture, settings: Settings) -> MemoryEstimate:
    """Weights, LoRA weights with gradients and AdamW state, saved activations and the LM head's tiles."""
    tokens = settings.batch_size * settings.max_length
    layer, dropout = _ACTIVATIONS[settings.weight_bytes]
    if settings.lora_dropout > 0:
        per_layer = layer(arch) + dropout(arch)
    else:
        per_layer = (_UNCAST_16_BIT_LAYER if settings.weight_bytes == 2 else layer)(arch)
    padding_mask = settings.batch_size * settings.max_length**2  # one boolean attention mask, shared by the layers
    layer_inputs = tokens * arch.hidden * settings.weight_bytes
    return MemoryEstimate(
        arch=arch,
        weights=arch.params * settings.weight_bytes,
        lora=arch.lora_params * ADAMW_LORA_BYTES,
        activations=int(tokens * per_layer * arch.layers) + padding_mask,
        # checkpointing keeps each layer's input and recomputes one layer at a time in the backward pass
        activations_checkpointed=int(layer_inputs * arch.layers + tokens * per_layer) + padding_mask,
        # a forward and a backward tile of TRL's fused head, in the 16-bit compute dtype
        logits=2 * min(tokens, FUSED_HEAD_ROWS) * min(arch.vocab, FUSED_HEAD_VOCAB) * 2,
    )


def plain_trainer_logits(arch: Architecture, settings: Settings) -> int:
    """What a plain transformers Trainer holds for logits: every position, in 16 bits, upcast, log-softmax, grad."""
    return settings.batch_size * settings.max_length * arch.vocab * (2 + 4 + 4 + 4)


def task_architecture(config: TaskConfig) -> Architecture:
    """The task's own model, from its config.json (a local directory, a converted GGUF or a cached hub id)."""
    path = resolve_model(config.model.name)
    try:
        model_config = AutoConfig.from_pretrained(path)
    except (OSError, ValueError) as exc:
        raise ModelError(f"model.name {config.model.name!r}: cannot read its config.json ({exc})") from exc
    return architecture(config.model.name, model_config, config.lora)


def plan(config: TaskConfig) -> list[MemoryEstimate]:
    """Estimates for the task's model and Qwen3-0.6B / 1.7B / 4B, at the task's settings.

    A task model whose config cannot be read (a hub id never downloaded) is left out with a warning.
    """
    settings = Settings.of(config)
    archs = []
    try:
        archs.append(task_architecture(config))
    except ModelError as exc:
        log.warning("%s; showing the Qwen3 sizes only", exc)
    archs += [architecture(name, qwen3_config(name), config.lora) for name in QWEN3_SIZES]
    return [estimate(arch, settings) for arch in archs]
