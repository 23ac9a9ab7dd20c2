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


@pytest.mark.parametrize("constrained", [True, False])
def test_openvino_answers_as_the_transformers_engine_does(run, constrained, one_thread):
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
