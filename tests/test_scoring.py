"""Classification by scoring: the engine's label is the likeliest candidate completion, computed by hand here."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import make_run_dir, write_jsonl
from transformers import AutoModelForCausalLM

from smalltune.config import TaskConfig
from smalltune.data.records import Record
from smalltune.errors import ModelError
from smalltune.formatting import end_of_turn, prompt_ids
from smalltune.inference.transformers_engine import TransformersEngine as Engine
from smalltune.inference.vllm_engine import VllmEngine

LABELS = ["体育", "体育新闻", "财经", "科技与互联网"]  # a shared prefix, and labels of several tokens


def classify_config(tmp_path, model_dir, **infer) -> TaskConfig:
    return TaskConfig(name="news", kind="classify", labels=LABELS, instruction="判断新闻标题的类别。",
                      data={"train": tmp_path / "train.jsonl"},
                      model={"name": str(model_dir), "max_length": 256, "dtype": "float32"},
                      infer={"batch_size": 4, "max_new_tokens": 8, **infer})


@pytest.fixture(scope="module")
def model(tiny_qwen3_dir):
    return AutoModelForCausalLM.from_pretrained(tiny_qwen3_dir, dtype=torch.float32).eval()


def by_hand(model, tokenizer, engine: Engine, record: Record, labels: list[str]) -> list[float]:
    """Each label's summed log-probability: one plain forward pass over prompt + label + end-of-turn, unpadded,
    summing log-softmax at the positions that predict the label's tokens."""
    prompt, _ = prompt_ids(tokenizer, engine.task, record, 256, False)
    sums = []
    for label in labels:
        completion = tokenizer(label + end_of_turn(tokenizer), add_special_tokens=False)["input_ids"]
        with torch.no_grad():
            logits = model(input_ids=torch.tensor([prompt + completion])).logits[0]
        log_probs = logits.log_softmax(-1)
        sums.append(sum(log_probs[len(prompt) - 1 + k, token].item() for k, token in enumerate(completion)))
    return sums


def softmax(values: list[float]) -> list[float]:
    top = max(values)
    weights = [math.exp(v - top) for v in values]
    return [w / sum(weights) for w in weights]


RECORDS = [
    Record("a", "t", "中超联赛第十轮战报：主队三比一取胜", "体育"),
    Record("b", "t", "央行宣布降准", "财经", candidates=("财经", "体育新闻")),
    Record("c", "t", "新款手机发布，搭载自研芯片，续航提升三成，售价不变", "科技与互联网",
           candidates=("科技与互联网", "体育", "财经")),
]


def test_scored_label_is_the_argmax_of_the_candidates_log_probabilities_by_hand(tmp_path, model, qwen3_tokenizer):
    engine = Engine(model, qwen3_tokenizer, classify_config(tmp_path, "tiny"))
    # one batch: prompts of different lengths (left padding), candidate lists of 4, 2 and 3, labels of 1-3 tokens
    answers = engine.generate(RECORDS)
    assert answers.new_tokens == 0 and answers.probabilities is not None
    assert len({len(engine.tokenizer(label)["input_ids"]) for label in LABELS}) > 1
    for record, text, probabilities in zip(RECORDS, answers.texts, answers.probabilities):
        labels = engine.task.choices(record)
        expected = softmax(by_hand(model, qwen3_tokenizer, engine, record, labels))
        assert list(probabilities) == labels
        assert list(probabilities.values()) == pytest.approx(expected, abs=1e-5)
        assert text == labels[max(range(len(labels)), key=expected.__getitem__)]
        assert sum(probabilities.values()) == pytest.approx(1.0, abs=1e-9)


def test_labels_sharing_a_prefix_are_told_apart_by_their_end_of_turn_token(tmp_path, model, qwen3_tokenizer):
    """体育 is scored as 体育<|im_end|>, so it is not the prefix of 体育新闻's score but a completion of its own."""
    engine = Engine(model, qwen3_tokenizer, classify_config(tmp_path, "tiny"))
    record = Record("p", "t", "世界杯预选赛今晚开战", "体育", candidates=("体育", "体育新闻"))
    (probabilities,) = engine.generate([record]).probabilities
    expected = softmax(by_hand(model, qwen3_tokenizer, engine, record, ["体育", "体育新闻"]))
    assert list(probabilities.values()) == pytest.approx(expected, abs=1e-5)
    assert 0 < probabilities["体育"] < 1 and 0 < probabilities["体育新闻"] < 1


def test_scoring_in_small_batches_gives_the_same_probabilities(tmp_path, model, qwen3_tokenizer, monkeypatch):
    from smalltune.inference import transformers_engine

    engine = Engine(model, qwen3_tokenizer, classify_config(tmp_path, "tiny"))
    together = engine.generate(RECORDS).probabilities
    monkeypatch.setattr(transformers_engine, "SCORED_TOKENS", 1)  # every prompt in a batch of its own
    progress: list[int] = []
    alone = engine.generate(RECORDS, on_batch=progress.append).probabilities
    assert progress == [0, 1, 1, 1]
    for a, b in zip(together, alone):
        assert list(a.values()) == pytest.approx(list(b.values()), abs=1e-5)


def test_generate_mode_decodes_the_label_without_probabilities(tmp_path, model, qwen3_tokenizer):
    # the random model spells labels in byte tokens: 16 tokens let every label finish
    engine = Engine(model, qwen3_tokenizer, classify_config(tmp_path, "tiny", classify="generate", max_new_tokens=16))
    answers = engine.generate(RECORDS)
    assert answers.probabilities is None and answers.new_tokens > 0
    assert all(text in engine.task.choices(record) for text, record in zip(answers.texts, RECORDS))


def test_few_shot_prompts_are_scored_too(tmp_path, model, qwen3_tokenizer):
    engine = Engine(model, qwen3_tokenizer, classify_config(tmp_path, "tiny"))
    shots = [Record("s", "t", "股市收盘上涨", "财经")]
    answers = engine.generate(RECORDS[:1], shots=shots, budget=1024)
    plain = engine.generate(RECORDS[:1])
    assert answers.prompt_tokens[0] > plain.prompt_tokens[0]
    assert answers.probabilities[0] != plain.probabilities[0]


def test_the_vllm_engine_asks_for_generate_mode_before_loading_anything(tmp_path, tiny_qwen3_dir):
    run = make_run_dir(tmp_path, tiny_qwen3_dir, "classify")
    with pytest.raises(ModelError, match="infer.classify: generate"):
        VllmEngine.from_run(run)


# ---- training on the scores: train.loss: choices -------------------------------------------------


def choices_config(tmp_path, model_dir, **train) -> TaskConfig:
    rows = [{"text": r.input, "label": r.output, "choices": list(r.candidates) or LABELS} for r in RECORDS]
    write_jsonl(tmp_path / "train.jsonl", rows)
    return TaskConfig(name="news", kind="classify", labels=LABELS, instruction="判断新闻标题的类别。",
                      data={"train": tmp_path / "train.jsonl", "format": "columns", "validation_share": 0,
                            "columns": {"input": "text", "output": "label", "candidates": "choices"}},
                      model={"name": str(model_dir), "max_length": 256, "dtype": "float32"}, lora={"dropout": 0.0},
                      train={"loss": "choices", "batch_size": 3, "micro_batch": 3, "logging_steps": 1, **train},
                      output_dir=tmp_path / "runs")


def test_the_choices_loss_is_the_gold_labels_cross_entropy_among_the_scores_the_engine_answers_with(
        tmp_path, tiny_qwen3_dir, model, qwen3_tokenizer):
    """Before any update (LoRA starts as the identity) a step's loss is the mean over its records of
    -log p(gold), p the probabilities scoring gives (computed by hand, one forward pass per label)."""
    from smalltune.training.run import build_trainer

    trainer = build_trainer(choices_config(tmp_path, tiny_qwen3_dir))
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(3)])
    trainer.model.train()
    loss = trainer.compute_loss(trainer.model, batch)
    engine = Engine(model, qwen3_tokenizer, choices_config(tmp_path, tiny_qwen3_dir))
    expected = []
    for record in RECORDS:
        labels = engine.task.choices(record)
        expected.append(-math.log(softmax(by_hand(model, qwen3_tokenizer, engine, record, labels))[labels.index(record.output)]))
    assert loss.item() == pytest.approx(sum(expected) / 3, rel=1e-4)
    loss.backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for n, p in trainer.model.named_parameters() if "lora_B" in n)


def test_training_on_the_choices_loss_makes_the_gold_labels_likelier(tmp_path, tiny_qwen3_dir):
    from smalltune.training.run import train

    config = choices_config(tmp_path, tiny_qwen3_dir, epochs=20, learning_rate=5e-3)
    run_dir = train(config)
    tuned = Engine.from_run(run_dir)
    after = tuned.generate(RECORDS).probabilities
    with tuned.untuned():
        before = tuned.generate(RECORDS).probabilities

    def gold_log_likelihood(probabilities: list[dict[str, float]]) -> float:
        return sum(math.log(p[r.output]) for p, r in zip(probabilities, RECORDS))

    # the random model is sure of some wrong labels (p(gold) 2e-11): the gold labels gain several nats
    assert gold_log_likelihood(after) > gold_log_likelihood(before) + 3


def test_the_choices_loss_is_refused_for_a_kind_without_candidates(tmp_path):
    with pytest.raises(ValueError, match="train.loss: choices needs a kind that answers among candidates"):
        TaskConfig(name="x", kind="extract", fields={"name": "姓名"}, data={"train": tmp_path / "t.jsonl"},
                   train={"loss": "choices"})
