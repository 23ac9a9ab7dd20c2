"""`smalltune export`: the merged model answers exactly like base + adapter, from a plain HF directory."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
import yaml
from peft import PeftModel
from transformers import AutoModelForCausalLM, AutoTokenizer
from typer.testing import CliRunner

from conftest import make_run_dir
from smalltune.cli import app
from smalltune.config import load_config
from smalltune.data.records import Record
from smalltune.errors import OutputError
from smalltune.formatting import prompt_ids
from smalltune.inference.transformers_engine import TransformersEngine as Engine
from smalltune.tasks import build_task

TEXTS = ["我叫王芳，住在北京市朝阳区建国路88号，邮箱wangfang@example.com。快递三天都没到。", "你好", "手机屏幕碎了。"]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, tiny_qwen3_dir):
    return make_run_dir(tmp_path_factory.mktemp("export"), tiny_qwen3_dir, infer={"max_new_tokens": 12})


def test_merged_directory_loads_with_plain_transformers_and_answers_like_base_plus_adapter(run_dir, tmp_path):
    out = tmp_path / "merged"
    result = CliRunner().invoke(app, ["export", str(run_dir), "--merge", "--out", str(out)])
    assert result.exit_code == 0, result.output

    names = {p.name for p in out.iterdir()}
    assert {"config.json", "generation_config.json", "tokenizer.json", "task.yaml"} <= names
    assert any(n.endswith(".safetensors") for n in names) and not any(n.endswith((".py", ".bin")) for n in names)
    assert "auto_map" not in json.loads((out / "config.json").read_text())  # no custom code to trust

    model = AutoModelForCausalLM.from_pretrained(out)
    tokenizer = AutoTokenizer.from_pretrained(out)
    im_end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    assert im_end in model.generation_config.eos_token_id and model.generation_config.do_sample is False

    config = load_config(out / "task.yaml")
    task = build_task(config)
    records = [Record(id=str(i), where="test", input=t, output=None) for i, t in enumerate(TEXTS)]
    prompts = [prompt_ids(tokenizer, task, r, config.model.max_length, config.model.enable_thinking)[0] for r in records]
    engine = Engine.from_run(run_dir)
    expected = engine.generate_ids(prompts).texts
    with engine.untuned():
        untuned = engine.generate_ids(prompts).texts
    assert expected != untuned  # the adapter matters, so equal answers below prove it was merged

    for ids, want in zip(prompts, expected):
        output = model.generate(torch.tensor([ids]), max_new_tokens=config.infer.max_new_tokens)
        assert tokenizer.decode(output[0, len(ids):], skip_special_tokens=True) == want


def test_adapter_export_copies_the_adapter_with_serving_instructions(run_dir, tmp_path):
    out = tmp_path / "adapter-out"
    result = CliRunner().invoke(app, ["export", str(run_dir), "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert {"adapter_config.json", "adapter_model.safetensors", "tokenizer.json", "task.yaml"} <= {p.name for p in out.iterdir()}
    readme = (out / "README.md").read_text(encoding="utf-8")
    assert "vllm serve" in readme and "--lora-modules tiny-extract=" in readme and "sglang" in readme


def test_export_refuses_a_non_empty_target_and_a_run_without_adapter(run_dir, tmp_path):
    taken = tmp_path / "taken"
    taken.mkdir()
    (taken / "keep.txt").write_text("mine")
    result = CliRunner().invoke(app, ["export", str(run_dir), "--out", str(taken)])
    assert result.exit_code != 0 and "not empty" in str(result.exception)
    assert (taken / "keep.txt").read_text() == "mine"

    result = CliRunner().invoke(app, ["export", str(tmp_path), "--merge", "--out", str(tmp_path / "x")])
    assert "not a run directory (no task.yaml)" in str(result.exception) and not (tmp_path / "x").exists()

    untrained = tmp_path / "untrained"
    untrained.mkdir()
    (untrained / "task.yaml").write_text((run_dir / "task.yaml").read_text())
    result = CliRunner().invoke(app, ["export", str(untrained), "--merge", "--out", str(tmp_path / "x")])
    assert "no trained adapter" in str(result.exception) and "smalltune train" in str(result.exception)
    assert not (tmp_path / "x").exists()


@pytest.mark.parametrize("merge", [[], ["--merge"]], ids=["adapter", "merged"])
def test_export_to_an_existing_file_is_a_clear_error_and_leaves_the_file(run_dir, tmp_path, merge):
    target = tmp_path / "model.bin"
    target.write_bytes(b"mine")
    result = CliRunner().invoke(app, ["export", str(run_dir), "--out", str(target), *merge])
    assert isinstance(result.exception, OutputError) and "model.bin: is a file" in str(result.exception)
    assert target.read_bytes() == b"mine"


def test_predict_engine_folds_the_adapter_in_and_answers_the_same(run_dir, tmp_path):
    records = [Record(id=str(i), where="test", input=t, output=None) for i, t in enumerate(TEXTS)]
    attached = Engine.from_run(run_dir)
    merged = Engine.from_run(run_dir, merge=True)
    assert isinstance(attached.model, PeftModel) and not isinstance(merged.model, PeftModel)
    assert merged.generate(records).texts == attached.generate(records).texts

    kept_apart = shutil.copytree(run_dir, tmp_path / "run")
    config = load_config(kept_apart / "task.yaml")
    config.infer.merge_adapter = False
    (kept_apart / "task.yaml").write_text(yaml.safe_dump(config.model_dump(mode="json"), allow_unicode=True), encoding="utf-8")
    assert isinstance(Engine.from_run(kept_apart, merge=True).model, PeftModel)  # the task file can keep it apart


def repeated_tokens(tokenizer, texts: list[str]) -> int:
    """How many tokens of the answers repeat an earlier token of the same answer."""
    return sum(len(ids) - len(set(ids)) for ids in (tokenizer.encode(t) for t in texts))


def test_repetition_penalty_breaks_greedy_loops_and_travels_with_the_merged_export(tmp_path, tiny_qwen3_dir):
    run = make_run_dir(tmp_path, tiny_qwen3_dir, kind="chat", infer={"max_new_tokens": 24, "repetition_penalty": 1.5})
    records = [Record(id=str(i), where="test", input=t, output=None) for i, t in enumerate(TEXTS)]
    engine = Engine.from_run(run)
    penalised = engine.generate(records).texts
    engine.config.infer.repetition_penalty = 1.0
    plain = engine.generate(records).texts
    assert repeated_tokens(engine.tokenizer, penalised) < repeated_tokens(engine.tokenizer, plain)

    out = tmp_path / "merged"
    assert CliRunner().invoke(app, ["export", str(run), "--merge", "--out", str(out)]).exit_code == 0
    model = AutoModelForCausalLM.from_pretrained(out)
    tokenizer = AutoTokenizer.from_pretrained(out)
    assert model.generation_config.repetition_penalty == 1.5  # plain transformers and vLLM read it from there
    config = load_config(out / "task.yaml")
    task = build_task(config)
    for record, want in zip(records, penalised):
        ids = prompt_ids(tokenizer, task, record, config.model.max_length, config.model.enable_thinking)[0]
        output = model.generate(torch.tensor([ids]), max_new_tokens=config.infer.max_new_tokens)
        assert tokenizer.decode(output[0, len(ids):], skip_special_tokens=True) == want
