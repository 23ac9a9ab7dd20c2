"""The vLLM engine answers as the transformers engine does: same prompts, same grammars, same greedy tokens.

vLLM pins its own transformers, so these tests run in .venv-vllm (`make test-vllm`); elsewhere they
skip, except the one that checks the message a user gets when vLLM is missing.
"""

from __future__ import annotations

import json
from importlib.util import find_spec
from pathlib import Path

import pytest
from typer.testing import CliRunner

from conftest import make_run_dir, write_jsonl
from smalltune.cli import app
from smalltune.config import load_config
from smalltune.data.records import Record, load_splits
from smalltune.errors import ModelError
from smalltune.inference.transformers_engine import TransformersEngine as Engine
from smalltune.recipes.synth.complaints import FIELDS, generate_complaints
from smalltune.runs import RunDir
from smalltune.inference.vllm_engine import VllmEngine

HAS_VLLM = find_spec("vllm") is not None
needs_vllm = pytest.mark.skipif(not HAS_VLLM, reason="vLLM is not installed here: `make test-vllm` runs these in .venv-vllm")
DEMO_RUN = Path(__file__).resolve().parents[1] / "runs" / "demo" / "complaints"


def held_out(n: int, seed: int = 11) -> list[Record]:
    """n complaint records the runs never trained on."""
    _, rows = generate_complaints(n_train=0, n_test=n, seed=seed)
    return [Record(id=r["id"], input=r["input"], output=r["output"], where=r["id"]) for r in rows]


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory, tiny_qwen3_dir) -> Path:
    """A tiny random Qwen3 extract run with a random (non-zero) LoRA adapter, float32 in both engines.

    The model is conftest's tiny Qwen3 with 64-wide attention heads, the narrowest vLLM's CPU attention takes.
    """
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    root = tmp_path_factory.mktemp("vllm")
    config = AutoConfig.from_pretrained(tiny_qwen3_dir)
    config.head_dim = 64
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(config).save_pretrained(root / "model")
    AutoTokenizer.from_pretrained(tiny_qwen3_dir).save_pretrained(root / "model")
    return make_run_dir(root, root / "model", "extract", infer={"batch_size": 4, "max_new_tokens": 12})


@pytest.fixture(scope="module")
def engines(tiny_run):
    """(transformers engine, vLLM engine) on the same run; one vLLM engine serves the whole module."""
    return Engine.from_run(tiny_run), VllmEngine.from_run(tiny_run)


def with_task(engine, config, adapter: Path):
    """The same loaded model behind an engine for another task config."""
    if isinstance(engine, VllmEngine):
        return VllmEngine(engine.llm, engine.tokenizer, config, adapter)
    return Engine(engine.model, engine.tokenizer, config)


@needs_vllm
def test_tuned_and_untuned_answers_equal_the_transformers_engine(engines, tiny_run):
    hf, vl = engines
    records = held_out(4)
    config = hf.config.model_copy(update={"infer": hf.config.infer.model_copy(update={"constrained": False})})
    hf_free, vl_free = (with_task(engine, config, RunDir(tiny_run).adapter) for engine in engines)
    tuned = vl_free.generate(records)
    assert tuned.texts == hf_free.generate(records).texts
    with hf_free.untuned(), vl_free.untuned():
        untuned = vl_free.generate(records)
        assert untuned.texts == hf_free.generate(records).texts
    assert tuned.texts != untuned.texts  # the adapter is really applied
    assert tuned.new_tokens > 0 and not any(tuned.truncated)


@needs_vllm
def test_constrained_answers_follow_the_same_grammar(engines):
    hf, vl = engines
    records = held_out(3)
    progress: list[int] = []
    answers = vl.generate(records, on_batch=progress.append)
    assert answers.texts == hf.generate(records).texts
    assert progress[0] == 0 and sum(progress) == len(records)
    assert all(text.startswith('{"name": "') for text in answers.texts)  # the canonical object, cut at max_new_tokens


@needs_vllm
def test_classify_grammar_yields_one_of_the_labels(engines, tiny_run):
    hf, vl = engines
    config = load_config(tiny_run / "task.yaml")
    labels = ["投诉", "咨询", "表扬"]
    classify = config.model_copy(update={"kind": "classify", "fields": {}, "labels": labels,
                                         "infer": config.infer.model_copy(update={"classify": "generate"})})
    vl_classify = with_task(vl, classify, RunDir(tiny_run).adapter)
    records = held_out(4)
    answers = vl_classify.generate(records).texts
    assert all(answer in labels for answer in answers)
    assert answers == with_task(hf, classify, RunDir(tiny_run).adapter).generate(records).texts


@needs_vllm
def test_predict_cli_with_the_vllm_engine(tiny_run, tmp_path):
    records = held_out(3)
    inputs = write_jsonl(tmp_path / "in.jsonl", [{"id": r.id, "input": r.input} for r in records])
    out = tmp_path / "out.jsonl"
    result = CliRunner().invoke(app, ["predict", str(tiny_run), str(inputs), "-o", str(out), "--engine", "vllm"])
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    assert [r["id"] for r in rows] == [r.id for r in records]
    assert all(r["answer"].startswith('{"name": "') for r in rows)


@pytest.mark.skipif(HAS_VLLM, reason="checks the message shown where vLLM is missing")
def test_without_vllm_the_user_is_told_how_to_install_it(tiny_run, tmp_path):
    with pytest.raises(ModelError, match="make setup-vllm"):
        VllmEngine.from_run(tiny_run)
    inputs = write_jsonl(tmp_path / "in.jsonl", [{"id": "a", "input": "张三，住在北京。"}])
    result = CliRunner().invoke(app, ["predict", str(tiny_run), str(inputs), "-o", str(tmp_path / "o.jsonl"),
                                      "--engine", "vllm"])
    assert result.exit_code != 0 and isinstance(result.exception, ModelError)


@needs_vllm
@pytest.mark.slow
@pytest.mark.skipif(not RunDir(DEMO_RUN).adapter.is_dir(), reason="needs the demo run: `smalltune demo` first")
def test_trained_default_run_answers_equal_the_transformers_engine():
    """The trained complaints adapter on the default 0.5B model, 8 held-out records, constrained (the default)."""
    config = load_config(DEMO_RUN / "task.yaml")
    hf = Engine.from_run(DEMO_RUN)
    records = load_splits(config.data, check=hf.task.check).test[:8]
    expected = hf.generate(records).texts
    vl = VllmEngine.from_run(DEMO_RUN)
    answers = vl.generate(records).texts
    parsed = [vl.task.parse(text, record) for text, record in zip(answers, records)]
    assert all(p.ok and list(p.value) == list(FIELDS) for p in parsed), answers
    differing = [(a, b) for a, b in zip(answers, expected) if a != b]
    assert not differing, f"{len(differing)} of {len(records)} answers differ: {differing}"
