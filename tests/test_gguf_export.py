"""`smalltune export --gguf`: one GGUF file that transformers and llama.cpp load and answer with like the merged model."""

from __future__ import annotations

import functools

import gguf
import numpy as np
import pytest
import torch
from llama_cpp import Llama, llama_get_logits_ith
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig
from typer.testing import CliRunner

from conftest import make_run_dir, tiny_model_dir
from smalltune.cli import app
from smalltune.data.records import Record
from smalltune.errors import ModelError, OutputError
from smalltune.formatting import prompt_ids
from smalltune.inference.transformers_engine import TransformersEngine as Engine
from smalltune.tasks import build_task

TEXTS = ["我叫王芳，住在北京市朝阳区建国路88号，邮箱wangfang@example.com。快递三天都没到。", "手机屏幕碎了。"]
ROUNDED = {"bf16": torch.bfloat16, "f16": torch.float16}
CASES = [("qwen2", "bf16"), ("qwen3", "f16")]


@pytest.fixture(scope="module")
def runs(tmp_path_factory, tiny_qwen2_dir, tiny_qwen3_dir):
    """A run with a random adapter over each tiny model."""
    return {arch: make_run_dir(tmp_path_factory.mktemp(f"gguf-{arch}"), base, infer={"max_new_tokens": 10})
            for arch, base in {"qwen2": tiny_qwen2_dir, "qwen3": tiny_qwen3_dir}.items()}


@pytest.fixture(scope="module")
def exported(tmp_path_factory, runs):
    """export --gguf, once per (architecture, type): the folder written."""
    done = {}

    def export(arch: str, gguf_type: str):
        if (arch, gguf_type) not in done:
            out = tmp_path_factory.mktemp("out") / f"{arch}-{gguf_type}"
            args = ["export", str(runs[arch]), "--out", str(out), "--gguf", "--gguf-type", gguf_type]
            result = CliRunner().invoke(app, args)
            assert result.exit_code == 0, result.output
            done[arch, gguf_type] = out
        return done[arch, gguf_type]

    return export


@pytest.fixture(scope="module")
def reference(runs):
    """Per architecture, loaded once: the merged model (float32), the run's tokenizer, and its prompts for TEXTS."""
    @functools.cache
    def load(arch: str):
        engine = Engine.from_run(runs[arch], merge=True)
        config, tokenizer = engine.config, engine.tokenizer
        task = build_task(config)
        records = [Record(id=str(i), where="test", input=t, output=None) for i, t in enumerate(TEXTS)]
        ids = [prompt_ids(tokenizer, task, r, config.model.max_length, config.model.enable_thinking)[0] for r in records]
        return engine.model.float(), tokenizer, ids

    return load


def rounded(model: torch.nn.Module, gguf_type: str) -> torch.nn.Module:
    """A float32 copy of the model whose weights are rounded to the file's type, as the GGUF holds them."""
    copy = type(model)(model.config)
    copy.load_state_dict({k: v.to(ROUNDED[gguf_type]).float() for k, v in model.state_dict().items()})
    return copy.eval()


def load_gguf(out, arch: str) -> torch.nn.Module:
    """The exported model loaded by transformers, in float32.

    transformers reads no head size from a GGUF and takes Qwen3's default (128, as every released Qwen3 has);
    the tiny Qwen3's is 16, so it is given here. llama.cpp reads it from `qwen3.attention.key_length`.
    """
    sizes = {"head_dim": 16} if arch == "qwen3" else {}
    return AutoModelForCausalLM.from_pretrained(out, gguf_file="model.gguf", dtype=torch.float32, **sizes)


def greedy(model: torch.nn.Module, ids: list[int], max_new_tokens: int, stop: int) -> list[int]:
    """transformers' greedy continuation, up to the stop token (kept)."""
    out = model.generate(torch.tensor([ids]), max_new_tokens=max_new_tokens, do_sample=False, eos_token_id=stop,
                         pad_token_id=stop)
    return out[0, len(ids):].tolist()


@pytest.mark.parametrize(("arch", "gguf_type"), CASES)
def test_gguf_loads_in_transformers_with_the_merged_weights_and_answers_alike(exported, reference, arch, gguf_type):
    out = exported(arch, gguf_type)
    assert {p.name for p in out.iterdir()} == {"model.gguf", "Modelfile", "README.txt", "task.yaml"}
    loaded = load_gguf(out, arch)
    merged, tokenizer, ids = reference(arch)
    want = rounded(merged, gguf_type)
    assert loaded.config.tie_word_embeddings == merged.config.tie_word_embeddings
    for key, weight in want.state_dict().items():  # the merged weights, rounded to the file's type and no further
        assert torch.equal(loaded.state_dict()[key], weight), key
    im_end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    for prompt in ids:
        assert greedy(loaded, prompt, 10, im_end) == greedy(want, prompt, 10, im_end)


def test_gguf_tokenizer_in_transformers_encodes_renders_and_stops_like_the_runs(exported, reference):
    tokenizer = AutoTokenizer.from_pretrained(exported("qwen2", "bf16"), gguf_file="model.gguf")
    _, run_tokenizer, ids = reference("qwen2")
    assert tokenizer.eos_token == "<|im_end|>" and tokenizer.chat_template == run_tokenizer.chat_template
    for prompt in ids:  # the rendered prompt (control tokens, Chinese, an e-mail address) splits into the same ids
        assert tokenizer(run_tokenizer.decode(prompt), add_special_tokens=False)["input_ids"] == prompt
    messages = [{"role": "user", "content": TEXTS[0]}]
    assert tokenizer.apply_chat_template(messages, add_generation_prompt=True) == run_tokenizer.apply_chat_template(
        messages, add_generation_prompt=True)


@pytest.mark.parametrize(("arch", "gguf_type"), CASES)
def test_llama_cpp_tokenises_and_answers_like_transformers(exported, reference, arch, gguf_type, one_thread):
    llm = Llama(model_path=str(exported(arch, gguf_type) / "model.gguf"), n_ctx=512, n_threads=1, verbose=False)
    merged, tokenizer, ids = reference(arch)
    want = rounded(merged, gguf_type)
    im_end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    assert llm.token_eos() == im_end
    for prompt in ids:
        assert llm.tokenize(tokenizer.decode(prompt).encode(), add_bos=False, special=True) == prompt
        llm.reset()
        llm.eval(prompt)
        logits = torch.from_numpy(np.ctypeslib.as_array(llama_get_logits_ith(llm.ctx, -1), shape=(llm.n_vocab(),)).copy())
        with torch.no_grad():
            expected = want(torch.tensor([prompt])).logits[0, -1]
        # llama.cpp rounds activations to the weights' type in its matrix products, torch keeps float32: here 0.4% apart
        assert torch.allclose(logits, expected, atol=0.01 * expected.abs().max()), (logits - expected).abs().max()
        tokens = []
        for token in llm.generate(prompt, temp=0.0, repeat_penalty=1.0, reset=True):
            tokens.append(token)
            if token == im_end or len(tokens) == 10:
                break
        assert tokens == greedy(want, prompt, 10, im_end)


def test_qwen2_modelfile_readme_and_default_system_prompt(exported):
    out = exported("qwen2", "bf16")
    modelfile = (out / "Modelfile").read_text(encoding="utf-8")
    assert modelfile.startswith("FROM ./model.gguf\n") and 'PARAMETER stop "<|im_end|>"' in modelfile
    assert "PARAMETER temperature 0\n" in modelfile and "PARAMETER repeat_penalty 1.0\n" in modelfile
    # Qwen2.5's template adds this system turn when a conversation has none; so does Ollama, from SYSTEM
    assert 'SYSTEM """You are Qwen, created by Alibaba Cloud. You are a helpful assistant."""' in modelfile
    assert "<|im_start|>{{ .Role }}\n{{ .Content }}<|im_end|>" in modelfile
    readme = (out / "README.txt").read_text(encoding="utf-8")
    assert "llama-cli -m model.gguf" in readme and "llama-server -m model.gguf" in readme
    assert "ollama create tiny-extract -f Modelfile" in readme and "enable_thinking" not in readme


def test_qwen3_modelfile_opens_the_answer_with_the_empty_think_block(exported):
    modelfile = (exported("qwen3", "f16") / "Modelfile").read_text(encoding="utf-8")
    assert "<|im_start|>assistant\n<think>\n\n</think>\n\n{{ end }}" in modelfile and "SYSTEM" not in modelfile
    assert "enable_thinking" in (exported("qwen3", "f16") / "README.txt").read_text(encoding="utf-8")


def test_q8_0_file_holds_the_metadata_and_weights_within_a_block_step_and_runs_in_llama_cpp(exported, reference):
    out = exported("qwen3", "q8_0")
    merged, tokenizer, ids = reference("qwen3")
    reader = gguf.GGUFReader(out / "model.gguf")
    im_end = tokenizer.convert_tokens_to_ids("<|im_end|>")

    def value(name: str):
        return reader.fields[name].contents(im_end) if name == "tokenizer.ggml.tokens" else reader.fields[name].contents()

    assert value("general.architecture") == "qwen3" and value("general.name") == "tiny-extract"
    assert value("tokenizer.chat_template") == tokenizer.chat_template  # Qwen3's, with its think blocks
    assert value("tokenizer.ggml.eos_token_id") == im_end == value("tokenizer.ggml.eot_token_id")
    assert value("tokenizer.ggml.pre") == "qwen2" and value("tokenizer.ggml.tokens") == "<|im_end|>"
    assert value("qwen3.block_count") == 2 and value("qwen3.attention.head_count_kv") == 2
    assert value("qwen3.attention.key_length") == 16 and value("qwen3.context_length") == 2048
    assert value("general.file_type") == gguf.LlamaFileType.MOSTLY_Q8_0

    tensors = {t.name: t for t in reader.tensors}
    assert "output.weight" not in tensors  # tied to the token embedding, as in the model
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.QWEN3, 2)
    for key, weight in merged.state_dict().items():
        if key == "lm_head.weight":
            continue
        tensor = tensors[names.get_name(key, try_suffixes=(".weight",))]
        assert tensor.tensor_type == (gguf.GGMLQuantizationType.Q8_0 if weight.dim() == 2 else gguf.GGMLQuantizationType.F32)
        step = weight.abs().max() / 127  # a q8_0 block stores its values in 127 steps of its largest
        stored = torch.from_numpy(gguf.quants.dequantize(tensor.data, tensor.tensor_type).copy()).reshape(weight.shape)
        assert torch.allclose(stored, weight, rtol=0, atol=step), key

    llm = Llama(model_path=str(out / "model.gguf"), n_ctx=512, n_threads=1, verbose=False)
    assert len(llm.create_completion(ids[0], max_tokens=3, temperature=0)["choices"][0]["text"]) > 0


def test_unsupported_architecture_and_type_are_refused_before_the_merge(tmp_path, qwen_tokenizer, runs):
    config = LlamaConfig(vocab_size=151936, hidden_size=64, intermediate_size=128, num_hidden_layers=1,
                         num_attention_heads=4, num_key_value_heads=2)
    run = make_run_dir(tmp_path, tiny_model_dir(tmp_path / "tiny-llama", qwen_tokenizer, config))
    result = CliRunner().invoke(app, ["export", str(run), "--out", str(tmp_path / "x"), "--gguf"])
    assert isinstance(result.exception, ModelError) and "'llama'" in str(result.exception)
    assert "writes qwen2, qwen3 models" in str(result.exception) and not (tmp_path / "x").exists()

    result = CliRunner().invoke(app, ["export", str(runs["qwen3"]), "--out", str(tmp_path / "x"), "--gguf",
                                      "--gguf-type", "q4_k"])
    assert isinstance(result.exception, OutputError) and "use one of bf16, f16, q8_0" in str(result.exception)
    result = CliRunner().invoke(app, ["export", str(runs["qwen3"]), "--out", str(tmp_path / "x"), "--gguf-type", "f16"])
    assert result.exit_code != 0 and "--gguf-type needs --gguf" in result.output
