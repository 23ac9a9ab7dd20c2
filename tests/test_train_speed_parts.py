"""The speed choices of a training run: the answer-only loss equals the full-logits loss, and each choice is logged and overridable."""

from __future__ import annotations

import logging

import pytest
import torch
import torch.nn.functional as F

from conftest import write_jsonl
from smalltune.config import TaskConfig
from smalltune.errors import ConfigError
from smalltune.recipes.synth.complaints import FIELDS, generate_complaints
from smalltune.training.run import CPU_PAD_MULTIPLE, build_trainer, micro_batch_size, sft_config
from smalltune.training.trainer import answer_logits, labelled_positions, shared_prefix_length


def tiny_config(tmp_path, model_dir, **train) -> TaskConfig:
    rows, _ = generate_complaints(n_train=8, n_test=1, seed=3)
    write_jsonl(tmp_path / "train.jsonl", rows)
    return TaskConfig(
        name="speed", kind="extract", fields=FIELDS,
        data={"train": tmp_path / "train.jsonl", "validation_share": 0, "test_share": 0},
        model={"name": str(model_dir), "max_length": 256, "dtype": "float32"},
        lora={"dropout": 0.0}, train={"batch_size": 4, "report_to": "none", **train}, output_dir=tmp_path / "runs",
    )


@pytest.fixture(scope="module")
def trainer_and_batch(tmp_path_factory, tiny_qwen3_dir):
    trainer = build_trainer(tiny_config(tmp_path_factory.mktemp("speed"), tiny_qwen3_dir))
    batch = next(iter(trainer.get_train_dataloader()))
    return trainer, batch


def lora_grads(model) -> dict[str, torch.Tensor]:
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}


def test_the_answer_only_loss_equals_the_full_logits_loss_in_value_and_gradients(trainer_and_batch):
    trainer, batch = trainer_and_batch
    model = trainer.model.train()

    model.zero_grad()
    trimmed = trainer.compute_loss(model, dict(batch))
    trimmed.backward()
    trimmed_grads = lora_grads(model)

    model.zero_grad()
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    full = F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), batch["labels"][:, 1:].flatten(), ignore_index=-100)
    full.backward()
    full_grads = lora_grads(model)

    torch.testing.assert_close(trimmed, full, rtol=1e-5, atol=1e-6)
    assert full_grads.keys() == trimmed_grads.keys() and any(g.abs().sum() > 0 for g in full_grads.values())
    for name, grad in full_grads.items():
        torch.testing.assert_close(trimmed_grads[name], grad, rtol=1e-4, atol=1e-7, msg=name)
    assert trainer._metrics["train"]["mean_token_accuracy"], "token accuracy is still logged"


def test_a_batch_s_shared_opening_runs_once_and_gives_the_same_loss_and_gradients(trainer_and_batch):
    trainer, batch = trainer_and_batch
    model = trainer.model.train()
    keep, targets = labelled_positions(batch["labels"])
    prefix = shared_prefix_length(batch["input_ids"], batch["attention_mask"], keep)
    assert prefix > 20 and prefix < int(batch["attention_mask"].sum(1).min())  # system + instruction, not the inputs

    embedded = []
    hook = model.get_input_embeddings().register_forward_hook(lambda module, args, out: embedded.append(args[0].numel()))

    def loss_and_grads(shared: int):
        model.zero_grad()
        embedded.clear()
        logits = answer_logits(model, dict(batch), keep, shared)
        loss = F.cross_entropy(logits.float(), targets)
        loss.backward()
        return loss, lora_grads(model), sum(embedded)

    whole, whole_grads, whole_tokens = loss_and_grads(0)
    shared, shared_grads, shared_tokens = loss_and_grads(prefix)
    hook.remove()
    rows = batch["input_ids"].shape[0]
    assert whole_tokens - shared_tokens == (rows - 1) * prefix  # the opening ran once, not once per row
    torch.testing.assert_close(shared, whole, rtol=1e-5, atol=1e-6)
    for name, grad in whole_grads.items():
        torch.testing.assert_close(shared_grads[name], grad, rtol=1e-4, atol=1e-6, msg=name)


def test_the_shared_opening_runs_once_only_where_it_changes_no_number(tmp_path, tiny_qwen3_dir):
    from smalltune.training.run import shares_prefix

    config = tiny_config(tmp_path, tiny_qwen3_dir)
    args = sft_config(config, torch.float32, has_validation=False)
    assert shares_prefix(config, args)
    config.lora.dropout = 0.1  # each row would share the opening's dropout mask
    assert not shares_prefix(config, args)
    config.train.share_prefix = "on"
    assert shares_prefix(config, args)
    config.train.gradient_checkpointing = "on"  # the recomputed layers drop the KV cache
    assert not shares_prefix(config, sft_config(config, torch.float32, has_validation=False))


def test_the_shared_opening_stops_before_the_first_answer_and_needs_two_rows():
    ids = torch.tensor([[1, 2, 3, 4, 9, 0], [1, 2, 3, 5, 9, 9]])
    mask = torch.tensor([[1, 1, 1, 1, 1, 0], [1, 1, 1, 1, 1, 1]])
    nothing = torch.zeros_like(ids, dtype=torch.bool)
    assert shared_prefix_length(ids, mask, nothing) == 3
    answer_at_2 = nothing.clone()
    answer_at_2[1, 1] = True  # position 1 predicts row 1's first answer token
    assert shared_prefix_length(ids, mask, answer_at_2) == 1
    assert shared_prefix_length(ids[:1], mask[:1], nothing[:1]) == 0


def test_logits_are_built_only_at_answer_positions(trainer_and_batch):
    trainer, batch = trainer_and_batch
    tokenizer = trainer.processing_class
    keep, targets = labelled_positions(batch["labels"])

    with torch.no_grad():
        logits = trainer.model(
            input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], logits_to_keep=keep
        ).logits
    assert logits.shape == (targets.numel(), len(tokenizer))
    assert targets.numel() < batch["attention_mask"].sum() / 2  # the prompts are most of each example

    end_of_turn = tokenizer.convert_tokens_to_ids("<|im_end|>")
    for row, labels in zip(keep, batch["labels"]):
        answer = labels[labels != -100].tolist()
        predicted_from = row.nonzero().flatten()
        # the positions just before the answer tokens, and nothing else
        assert (predicted_from + 1).tolist() == (labels != -100).nonzero().flatten().tolist()
        assert answer[-1] == end_of_turn and tokenizer.decode(answer[:-1]).startswith('{"name"')


def test_each_speed_choice_is_logged_and_can_be_overridden(tmp_path, tiny_qwen3_dir, caplog):
    config = tiny_config(
        tmp_path, tiny_qwen3_dir, logits="trl", gradient_checkpointing="on", group_by_length=False, logging_steps=1
    )
    with caplog.at_level(logging.INFO, logger="smalltune.training.run"):
        trainer = build_trainer(config)
    assert not trainer.labelled_logits and trainer.args.gradient_checkpointing
    logged = "\n".join(r.getMessage() for r in caplog.records if "speed settings" in r.getMessage())
    for choice in ("TRL loss (train.logits=trl)", "gradient checkpointing on",
                   "shared prompt opening run in every row (train.share_prefix=auto)",
                   "random batches", "Liger kernels off (train.liger_kernel=auto)", "4 examples per optimizer step"):
        assert choice in logged, choice

    trainer.args.max_steps = 1
    trainer.train()  # TRL's own loss path still trains
    assert any("loss" in h for h in trainer.state.log_history)


def one_step(config: TaskConfig):
    trainer = build_trainer(config)
    trainer.args.max_steps = 1
    trainer.train()
    return trainer, next(h for h in trainer.state.log_history if "loss" in h)


@pytest.mark.skipif(torch.cuda.is_available(), reason="on a GPU `auto` runs the whole batch at once")
def test_a_cpu_runs_one_example_at_a_time_and_takes_the_same_optimizer_step(tmp_path, tiny_qwen3_dir):
    settings = {"group_by_length": False, "logging_steps": 1, "share_prefix": "off"}
    config = tiny_config(tmp_path, tiny_qwen3_dir, micro_batch=4, **settings)
    whole, whole_log = one_step(config)
    config.lora.dropout = 0.1  # no shared opening wanted: `auto` runs one example per forward pass
    config.train.micro_batch = "auto"
    assert micro_batch_size(config) == 1
    config.lora.dropout = 0.0  # the step's numbers, without dropout's random masks
    config.train.micro_batch = 1
    single, single_log = one_step(config)

    assert (whole.args.per_device_train_batch_size, whole.args.gradient_accumulation_steps) == (4, 1)
    assert (single.args.per_device_train_batch_size, single.args.gradient_accumulation_steps) == (1, 4)
    # the same four records, the loss over all their answer tokens, the same gradient
    assert single_log["loss"] == pytest.approx(whole_log["loss"], rel=1e-4)
    assert single_log["grad_norm"] == pytest.approx(whole_log["grad_norm"], rel=1e-3)
    batch = next(iter(single.get_train_dataloader()))
    assert batch["input_ids"].shape[1] % CPU_PAD_MULTIPLE == 0  # a few shapes, each with its cached CPU kernels


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error shown where Liger cannot run")
def test_asking_for_liger_kernels_without_a_gpu_is_a_clear_error(tmp_path, tiny_qwen3_dir):
    config = tiny_config(tmp_path, tiny_qwen3_dir, liger_kernel="on")
    with pytest.raises(ConfigError, match="train.liger_kernel: 'on' needs a CUDA GPU"):
        sft_config(config, torch.float32, has_validation=False)


def test_automatic_checkpointing_is_planned_at_the_longest_example_not_at_max_length(tmp_path, tiny_qwen3_dir):
    from smalltune.training.memory import Settings, estimate, task_architecture

    config = tiny_config(tmp_path, tiny_qwen3_dir)
    arch = task_architecture(config)
    # a max_length whose plan would not fit half of any machine's RAM, for examples of a few hundred tokens
    config.model.max_length = 10**8
    assert estimate(arch, Settings.of(config)).total(checkpointing=False) > 2**50
    assert sft_config(config, torch.float32, has_validation=False).gradient_checkpointing
    assert not sft_config(config, torch.float32, has_validation=False, longest=300).gradient_checkpointing


def test_bf16_training_feeds_lora_layers_bf16_and_learns_as_the_float32_cast_does(tmp_path, tiny_qwen3_dir, monkeypatch):
    import contextlib

    import smalltune.training.trainer

    def train_bf16(where) -> tuple[list[float], set[torch.dtype], object]:
        # two steps of two examples: bf16 products are slow on CPUs without bf16 instructions
        config = tiny_config(where, tiny_qwen3_dir, gradient_checkpointing="on", logging_steps=1, batch_size=2)
        config.model.dtype = "bfloat16"
        trainer = build_trainer(config)
        trainer.args.max_steps = 2
        lora_a = next(m for n, m in trainer.model.named_modules() if n.endswith("q_proj.lora_A.default"))
        seen = set()
        lora_a.register_forward_pre_hook(lambda module, args: seen.add(args[0].dtype))
        trainer.train()  # with checkpointing on, the backward's recomputation also runs in the step
        return [h["loss"] for h in trainer.state.log_history if "loss" in h], seen, trainer

    losses, seen, trainer = train_bf16(tmp_path / "uncast")
    assert seen == {torch.bfloat16}
    assert all(m.cast_input_dtype_enabled for m in trainer.model.modules() if hasattr(m, "cast_input_dtype_enabled"))

    monkeypatch.setattr(smalltune.training.trainer, "disable_input_dtype_casting", lambda model, active: contextlib.nullcontext())
    cast_losses, cast_seen, _ = train_bf16(tmp_path / "cast")
    assert cast_seen == {torch.float32}
    torch.testing.assert_close(torch.tensor(losses), torch.tensor(cast_losses), rtol=0.02, atol=0.02)
