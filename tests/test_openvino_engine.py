"""The OpenVINO engine answers like the transformers engine: the same greedy answers, constrained and free, tuned
and untuned, from the GGUF files it writes once."""

from __future__ import annotations

import os

import pytest
import torch

from conftest import make_run_dir
from smalltune.data.records import Record
from smalltune.inference.engine import load_engine

pytest.importorskip("openvino_genai")

TEXTS = ["我叫王芳，住在北京市朝阳区建国路88号，邮箱wangfang@example.com。快递三天都没到。", "手机屏幕碎了。",
         "李雷 | 上海市浦东新区世纪大道1号 | lilei@qq.com | 宽带断了两天。"]


@pytest.fixture(scope="module")
def run(tmp_path_factory, tiny_qwen2_dir):
    """A run with a random adapter over the tiny Qwen2 (float32)."""
    return make_run_dir(tmp_path_factory.mktemp("openvino"), tiny_qwen2_dir, infer={"max_new_tokens": 12, "batch_size": 2})


def records() -> list[Record]:
    return [Record(id=str(i), where=f"test:{i + 1}", input=text, output=None) for i, text in enumerate(TEXTS)]


def rounded_to_f16(engine) -> None:
    """The transformers engine's (merged) weights rounded to f16 and back, as the f16 GGUF file holds them."""
    with torch.no_grad():
        for weight in engine.model.parameters():
            weight.copy_(weight.to(torch.float16).float())


@pytest.fixture(scope="module")
def qwen3_run(tmp_path_factory, tiny_qwen3_dir):
    """The same over the tiny Qwen3 (tied output layer, q/k norms, the Qwen3 template)."""
    return make_run_dir(tmp_path_factory.mktemp("openvino-qwen3"), tiny_qwen3_dir,
                        infer={"max_new_tokens": 12, "batch_size": 2})


@pytest.mark.parametrize(("model", "constrained"), [("run", True), ("run", False), ("qwen3_run", True)])
def test_openvino_answers_as_the_transformers_engine_does(request, model, constrained, one_thread):
    run = request.getfixturevalue(model)
    settings = {"constrained": constrained, "grounded": constrained}
    reference = load_engine(run, "transformers")
    reference.config = reference.config.model_copy(update={"infer": reference.config.infer.model_copy(update=settings)})
    reference.constrained = constrained
    rounded_to_f16(reference)
    engine = load_engine(run, "openvino")
    engine.config, engine.constrained = reference.config, constrained
    want, got = reference.generate(records()), engine.generate(records())
    assert got.texts == want.texts
    assert got.new_tokens == want.new_tokens > 0
    assert (run / "openvino-f16" / "model.gguf").is_file()


def test_untuned_answers_from_the_base_model(run, one_thread):
    reference = load_engine(run, "transformers", merge=False)
    rounded_to_f16(reference)
    engine = load_engine(run, "openvino")
    with reference.untuned():
        want = reference.generate(records())
    with engine.untuned():
        base = engine.generate(records())
    tuned = engine.generate(records())
    assert base.texts == want.texts
    assert tuned.texts != base.texts


def test_a_run_trained_again_in_place_is_exported_again(run, one_thread):
    from smalltune.inference.openvino_engine import tuned_gguf

    engine = load_engine(run, "openvino")
    written = tuned_gguf(run / "adapter", engine.tokenizer, engine.config)
    before = written.stat().st_mtime_ns
    assert tuned_gguf(run / "adapter", engine.tokenizer, engine.config).stat().st_mtime_ns == before  # written once
    weights = run / "adapter" / "adapter_model.safetensors"
    os.utime(weights, ns=(before + 10**9, before + 10**9))  # the adapter now newer than its export
    assert tuned_gguf(run / "adapter", engine.tokenizer, engine.config).stat().st_mtime_ns > before


def test_the_default_engine_on_a_cpu_is_openvino_for_decoding_tasks(run, one_thread):
    from smalltune.inference.engine import choose_engine
    from smalltune.inference.openvino_engine import OpenVinoEngine
    from smalltune.inference.transformers_engine import TransformersEngine
    from smalltune.runs import RunDir

    config = RunDir.load(run).config()
    assert config.infer.engine == "auto"
    assert choose_engine(config)[0] == "openvino"
    assert isinstance(load_engine(run), OpenVinoEngine)
    assert isinstance(load_engine(run, "transformers"), TransformersEngine)  # --engine overrides the task file


def test_classify_by_scoring_and_unreadable_architectures_keep_the_transformers_engine(tmp_path, tiny_qwen2_dir):
    from transformers import AutoTokenizer, LlamaConfig

    from conftest import tiny_model_dir
    from smalltune.inference.engine import choose_engine
    from smalltune.runs import RunDir

    scored = RunDir.load(make_run_dir(tmp_path / "score", tiny_qwen2_dir, "classify")).config()
    engine, reason = choose_engine(scored)
    assert engine == "transformers" and "scoring" in reason
    decoded = scored.model_copy(update={"infer": scored.infer.model_copy(update={"classify": "generate"})})
    assert choose_engine(decoded)[0] == "openvino"
    llama = tiny_model_dir(tmp_path / "llama", AutoTokenizer.from_pretrained(tiny_qwen2_dir), LlamaConfig(
        vocab_size=151936, hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2))
    other = decoded.model_copy(update={"model": decoded.model.model_copy(update={"name": str(llama)})})
    engine, reason = choose_engine(other)
    assert engine == "transformers" and "llama" in reason
