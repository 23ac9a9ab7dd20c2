"""A merged model as one GGUF file for llama.cpp and Ollama, with an Ollama Modelfile and a README.

`write_gguf` writes the weights under llama.cpp's tensor names (norms and biases in float32, the rest
in the type asked for), the architecture's hyperparameters and the byte-level BPE tokenizer with the
chat template. Its eos is the template's end-of-turn token (`<|im_end|>`), so llama.cpp stops where
smalltune's engine stops. Qwen2 and Qwen3 are written: both keep Hugging Face's rotary layout
(llama.cpp rotates them NeoX-style) and share Qwen's tokenizer; other architectures are refused.
"""

from __future__ import annotations

import json
from pathlib import Path

import gguf
import numpy as np
from gguf import GGMLQuantizationType, LlamaFileType, TokenType
from transformers import PretrainedConfig, PreTrainedModel, PreTrainedTokenizerBase

from smalltune.errors import ModelError, OutputError

ARCHITECTURES = {"qwen2": gguf.MODEL_ARCH.QWEN2, "qwen3": gguf.MODEL_ARCH.QWEN3}
GGUF_TYPES = {
    "bf16": (LlamaFileType.MOSTLY_BF16, GGMLQuantizationType.BF16),
    "f16": (LlamaFileType.MOSTLY_F16, GGMLQuantizationType.F16),
    "q8_0": (LlamaFileType.MOSTLY_Q8_0, GGMLQuantizationType.Q8_0),
}
_IM_START, _IM_END = "<|im_start|>", "<|im_end|>"


def gguf_architecture(config: PretrainedConfig) -> gguf.MODEL_ARCH:
    """llama.cpp's architecture for the model, or a ModelError naming the ones GGUF export writes."""
    if config.model_type not in ARCHITECTURES:
        raise ModelError(f"GGUF export writes {', '.join(ARCHITECTURES)} models; this run's base model is "
                         f"{config.model_type!r}: export it with --merge (a Hugging Face directory) instead")
    rope_type = (getattr(config, "rope_parameters", None) or {}).get("rope_type", "default")
    if rope_type != "default":
        raise ModelError(f"GGUF export writes unscaled rotary embeddings; this model's rope_type is {rope_type!r}")
    return ARCHITECTURES[config.model_type]


def file_types(gguf_type: str) -> tuple[LlamaFileType, GGMLQuantizationType]:
    """The file type and weight type for --gguf-type, or an OutputError listing the choices."""
    if gguf_type not in GGUF_TYPES:
        raise OutputError(f"--gguf-type {gguf_type}: use one of {', '.join(GGUF_TYPES)}")
    return GGUF_TYPES[gguf_type]


def _add_hyperparameters(writer: gguf.GGUFWriter, config: PretrainedConfig) -> None:
    """The architecture's sizes, attention heads, rotary base and norm epsilon."""
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_block_count(config.num_hidden_layers)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(config.num_attention_heads)
    writer.add_head_count_kv(config.num_key_value_heads)
    writer.add_key_length(head_dim)
    writer.add_value_length(head_dim)
    writer.add_rope_freq_base(config.rope_parameters["rope_theta"])
    writer.add_layer_norm_rms_eps(config.rms_norm_eps)


def _merges(tokenizer: PreTrainedTokenizerBase) -> list[str]:
    """The BPE merges as 'left right' lines, from the fast tokenizer's JSON."""
    model = json.loads(tokenizer.backend_tokenizer.to_str())["model"]
    if model["type"] != "BPE":
        raise ModelError(f"GGUF export writes byte-level BPE tokenizers; this one is {model['type']}")
    return [m if isinstance(m, str) else " ".join(m) for m in model["merges"]]


def _add_tokenizer(writer: gguf.GGUFWriter, tokenizer: PreTrainedTokenizerBase, rows: int, eos_id: int) -> None:
    """Tokens (padded to the embedding's rows), their types, merges, special ids and the chat template."""
    tokens, types = [f"[PAD{i}]" for i in range(rows)], [TokenType.UNUSED] * rows
    for token, i in tokenizer.get_vocab().items():
        tokens[i], types[i] = token, TokenType.NORMAL
    for i, added in tokenizer.added_tokens_decoder.items():
        types[i] = TokenType.CONTROL if added.special else TokenType.USER_DEFINED
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("qwen2")
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_token_merges(_merges(tokenizer))
    bos_id = tokenizer.bos_token_id
    if bos_id is not None:
        writer.add_bos_token_id(bos_id)
    writer.add_add_bos_token(bos_id is not None and tokenizer("x")["input_ids"][:1] == [bos_id])
    writer.add_eos_token_id(eos_id)
    writer.add_eot_token_id(eos_id)
    if tokenizer.pad_token_id is not None:
        writer.add_pad_token_id(tokenizer.pad_token_id)
    writer.add_chat_template(tokenizer.chat_template)


def _encoded(data: np.ndarray, qtype: GGMLQuantizationType) -> tuple[np.ndarray, GGMLQuantizationType]:
    """The tensor in the file's type; 1-D tensors (norms, biases) stay float32, rows not a whole number of blocks f16."""
    if data.ndim == 1:
        return data, GGMLQuantizationType.F32
    if data.shape[-1] % gguf.GGML_QUANT_SIZES[qtype][0]:
        qtype = GGMLQuantizationType.F16
    return gguf.quants.quantize(data, qtype), qtype


def _add_tensors(writer: gguf.GGUFWriter, model: PreTrainedModel, arch: gguf.MODEL_ARCH,
                 qtype: GGMLQuantizationType) -> None:
    """Every weight under its llama.cpp name; a tied output layer is left to reuse the token embedding."""
    names = gguf.get_tensor_name_map(arch, model.config.num_hidden_layers)
    for key, tensor in model.state_dict().items():
        if key == "lm_head.weight" and model.config.tie_word_embeddings:
            continue
        found = names.get_type_and_name(key, try_suffixes=(".weight", ".bias"))
        if found is None:
            raise ModelError(f"GGUF export: no llama.cpp name for the {model.config.model_type} weight {key}")
        data, written = _encoded(tensor.detach().float().cpu().numpy(), qtype)
        writer.add_tensor(found[1], data, raw_dtype=written)


def write_gguf(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, path: Path, gguf_type: str,
               name: str, eos_id: int) -> Path:
    """Write the model, its tokenizer and chat template as one GGUF file; returns path."""
    arch = gguf_architecture(model.config)
    file_type, qtype = file_types(gguf_type)
    writer = gguf.GGUFWriter(path, gguf.MODEL_ARCH_NAMES[arch])
    writer.add_name(name)
    writer.add_file_type(file_type)
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    _add_hyperparameters(writer, model.config)
    _add_tokenizer(writer, tokenizer, model.get_input_embeddings().weight.shape[0], eos_id)
    _add_tensors(writer, model, arch, qtype)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def _chatml(tokenizer: PreTrainedTokenizerBase, enable_thinking: bool) -> tuple[str | None, str]:
    """The system prompt the template adds when none is given, and the text that opens the answer after
    `<|im_start|>assistant\\n` (Qwen3's empty think block); a ModelError unless the template is ChatML."""
    turn = [{"role": "user", "content": "x"}]
    closed = tokenizer.apply_chat_template(turn, tokenize=False, enable_thinking=enable_thinking)
    opened = tokenizer.apply_chat_template(turn, tokenize=False, add_generation_prompt=True,
                                           enable_thinking=enable_thinking)
    opening = f"{_IM_START}assistant\n"
    if f"{_IM_START}user\nx{_IM_END}" not in closed or not opened[len(closed):].startswith(opening):
        raise ModelError("GGUF export writes an Ollama template for ChatML chat templates (<|im_start|>) only")
    system_head = f"{_IM_START}system\n"
    default_system = closed[len(system_head):closed.index(_IM_END)] if closed.startswith(system_head) else None
    return default_system, opened[len(closed) + len(opening):]


def modelfile(tokenizer: PreTrainedTokenizerBase, stops: list[str], system: str | None, enable_thinking: bool,
              repetition_penalty: float, context: int) -> str:
    """An Ollama Modelfile: the GGUF beside it, the ChatML template as the run rendered it, greedy answers."""
    default_system, answer_opening = _chatml(tokenizer, enable_thinking)
    system = system if system is not None else default_system
    template = (
        "{{- if .System }}<|im_start|>system\n{{ .System }}<|im_end|>\n{{ end }}\n"
        "{{- range $i, $_ := .Messages }}\n"
        "{{- $last := eq (len (slice $.Messages $i)) 1 }}\n"
        "{{- if ne .Role \"system\" }}<|im_start|>{{ .Role }}\n{{ .Content }}<|im_end|>\n{{ end }}\n"
        f"{{{{- if and $last (ne .Role \"assistant\") }}}}<|im_start|>assistant\n{answer_opening}{{{{ end }}}}\n"
        "{{- end }}"
    )
    lines = ["FROM ./model.gguf", f'TEMPLATE """{template}"""']
    if system:
        lines.append(f'SYSTEM """{system}"""')
    lines += [f'PARAMETER stop "{stop}"' for stop in stops]
    lines += ["PARAMETER temperature 0", f"PARAMETER repeat_penalty {repetition_penalty}", f"PARAMETER num_ctx {context}"]
    return "\n".join(lines) + "\n"


def readme(name: str, base: str, gguf_type: str, thinking_switch: bool) -> str:
    """How to run the GGUF with llama.cpp and Ollama."""
    no_thinking = " --chat-template-kwargs '{\"enable_thinking\": false}'" if thinking_switch else ""
    return (
        f"{name}: {base} with smalltune's LoRA adapter merged in, as one GGUF file ({gguf_type}).\n\n"
        "The chat template and the end-of-turn token are inside model.gguf. Answers are greedy, as smalltune\n"
        "evaluated them: keep the temperature at 0. The model learnt user turns as smalltune builds them from\n"
        "task.yaml (the task's instruction, a blank line, then the input text): send the same.\n\n"
        "llama.cpp\n"
        "  llama-cli -m model.gguf --temp 0 -cnv\n"
        f"  llama-server -m model.gguf --temp 0 --jinja{no_thinking}\n"
        "      then POST http://127.0.0.1:8080/v1/chat/completions (OpenAI-compatible)\n\n"
        "Ollama (Modelfile: this file, the ChatML template, stop at the end-of-turn token, temperature 0)\n"
        f"  ollama create {name} -f Modelfile\n"
        f"  ollama run {name}\n"
    )
