"""Model references: the offline default model, GGUF conversion once, clear errors."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from smalltune.errors import ModelError
from smalltune.models import choose_dtype, resolve_model


def test_default_model_resolves_offline_to_a_converted_qwen_directory(default_model_dir):
    assert os.environ["HF_HUB_OFFLINE"] == "1"
    path = Path(default_model_dir)
    assert (path / "model.safetensors").is_file() and (path / "tokenizer.json").is_file()
    assert '"model_type": "qwen2"' in (path / "config.json").read_text()
    assert (path.parents[1] / "gguf" / "qwen2.5-coder-0.5b-instruct.gguf").stat().st_size == 491_400_064


def test_conversion_happens_once(default_model_dir):
    marker = Path(default_model_dir) / "smalltune-converted.json"
    before = marker.stat().st_mtime_ns
    assert resolve_model("default") == default_model_dir
    assert marker.stat().st_mtime_ns == before


CONVERT = "import logging, sys; logging.basicConfig(level=logging.INFO); " \
          "from smalltune.models import resolve_model; print(resolve_model(sys.argv[1]))"


def test_a_gguf_file_converts_once_to_a_loadable_model_when_two_processes_ask_at_once(tmp_path):
    from smalltune.models import PACKAGED, _package_file, load_model, load_tokenizer

    smol = PACKAGED["smollm2-135m"]
    gguf = _package_file(*smol.parts[0], smol.install)
    env = {**os.environ, "SMALLTUNE_CACHE": str(tmp_path)}
    processes = [subprocess.Popen([sys.executable, "-c", CONVERT, str(gguf)], env=env, text=True,
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE) for _ in range(2)]
    finished = [process.communicate(timeout=300) for process in processes]
    assert [process.returncode for process in processes] == [0, 0], finished
    paths = {out.strip() for out, _ in finished}
    assert len(paths) == 1
    path = paths.pop()
    assert Path(path).parent == tmp_path / "models"
    assert sum("converting" in err for _, err in finished) == 1  # the second waited for the first's directory
    tokenizer = load_tokenizer(path)
    model = load_model(path, torch.float32)
    ids = tokenizer("Hello", return_tensors="pt")["input_ids"]
    assert model(input_ids=ids).logits.shape[-1] == model.config.vocab_size


@pytest.mark.parametrize("ref", ["./missing-dir", "/nope/model.gguf"])
def test_bad_references_say_what_to_use(ref):
    with pytest.raises(ModelError):
        resolve_model(ref)


def test_a_directory_without_config_is_rejected(tmp_path):
    with pytest.raises(ModelError, match="config.json"):
        resolve_model(str(tmp_path))


def test_dtype_choice_respects_an_explicit_setting():
    assert choose_dtype("float32") is torch.float32
    assert choose_dtype("auto") in (torch.bfloat16, torch.float32)


def test_the_output_layer_gets_contiguous_hidden_states_when_generate_keeps_the_last_positions(tiny_qwen3_dir):
    # generate's prefill keeps each row's last position: a strided slice, which torch.matmul multiplies on a CPU
    # against a copy of the output weight per row unless the loaded model makes it contiguous
    from smalltune.models import load_model

    model = load_model(str(tiny_qwen3_dir), torch.float32)
    seen = []
    model.get_output_embeddings().register_forward_pre_hook(lambda _, args: seen.append(args[0].is_contiguous()))
    ids = torch.randint(0, 100, (4, 9))
    full = model(input_ids=ids).logits[:, -1]
    kept = model(input_ids=ids, logits_to_keep=1).logits[:, -1]
    assert seen == [True, True]
    torch.testing.assert_close(kept, full)
