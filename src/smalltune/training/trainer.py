"""The trainer: TRL's SFTTrainer with a loss computed at answer positions only (or over a classify record's
choices), each batch's shared prompt opening computed once, LoRA inputs left in bf16, and a length-grouped batch
order that a resumed run repeats."""

from __future__ import annotations

import torch
from peft.helpers import disable_input_dtype_casting
from transformers.trainer_pt_utils import LengthGroupedSampler
from transformers.utils import is_triton_available
from trl import SFTTrainer

from smalltune.config import TaskConfig
from smalltune.errors import ModelError
from smalltune.inference.scoring import cache_argument, choice_log_probs, returned_cache

CHOICE_IDS, GOLD = "choice_ids", "gold"  # the dataset columns of train.loss: choices


def uncast_lora_inputs(config: TaskConfig, dtype: torch.dtype) -> bool:
    """Whether training steps skip peft's float32 copy of each LoRA input: under bf16 autocast without LoRA
    dropout, where the copy would only be cast back to bf16."""
    return dtype == torch.bfloat16 and config.lora.dropout == 0


def labelled_positions(labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Where the LM head must run: a (batch, seq) mask of positions whose next token has a label, and those labels.

    Position t predicts token t+1, so the mask is the label mask shifted left by one. The labels come in the
    mask's row-major order, the order in which `hidden_states[mask]` lists the positions.
    """
    next_labels = labels[:, 1:]
    keep = torch.zeros_like(labels, dtype=torch.bool)
    keep[:, :-1] = next_labels != -100
    return keep, next_labels[keep[:, :-1]]


def shared_prefix_length(input_ids: torch.Tensor, attention_mask: torch.Tensor | None, keep: torch.Tensor) -> int:
    """How many leading tokens every row of a (right-padded) batch has in common before its first labelled
    position: the system prompt and instruction of a task, computed once for the batch when shared."""
    if input_ids.shape[0] < 2:
        return 0
    same = (input_ids == input_ids[:1]).all(0) & ~keep.any(0)
    if attention_mask is not None:
        same &= attention_mask.bool().all(0)
    return int(same.long().cumprod(0).sum())


def answer_logits(model, inputs: dict[str, torch.Tensor], keep: torch.Tensor, prefix: int = 0) -> torch.Tensor:
    """The logits at the `keep` positions (as `logits_to_keep=keep` gives them), with the batch's first `prefix`
    tokens run once and their keys and values repeated for every row.

    The rows' shared prefix is the same computation in every row; running it once and attending to it through
    the KV cache gives the same logits, and its gradients (the sum over rows) flow back through the cache.
    """
    model_inputs = {k: v for k, v in inputs.items() if k != "labels"}
    if prefix == 0:
        return model(**model_inputs, use_cache=False, logits_to_keep=keep).logits
    ids = model_inputs.pop("input_ids")
    cache = returned_cache(model, model(input_ids=ids[:1, :prefix], use_cache=True, logits_to_keep=1))
    cache.batch_repeat_interleave(ids.shape[0])
    model_inputs[cache_argument(model)] = cache
    model_inputs.setdefault("attention_mask", torch.ones_like(ids))
    if "position_ids" in model_inputs:
        model_inputs["position_ids"] = model_inputs["position_ids"][:, prefix:]
    return model(input_ids=ids[:, prefix:], use_cache=True, **model_inputs,
                 logits_to_keep=keep[:, prefix:]).logits


def _trl_head_is_labelled_only(device: torch.device) -> bool:
    """Where TRL's fused LM head already projects only labelled positions (in vocabulary tiles): Triton devices."""
    return device.type in ("cuda", "xpu") and is_triton_available()


class EpochSeededLengthGroupedSampler(LengthGroupedSampler):
    """Length-grouped batches (train.group_by_length) in an order drawn from the data seed and the epoch alone.

    transformers' own sampler draws the order from the global RNG as the epoch starts, a state that a run resumed
    in the middle of a later epoch does not have: it would skip the wrong batches, training some examples twice in
    that epoch and others not at all.
    """

    def __init__(self, sampler: LengthGroupedSampler, seed: int):
        super().__init__(sampler.batch_size, lengths=sampler.lengths)
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self):
        self.generator = torch.Generator().manual_seed(self.seed + self.epoch)
        return super().__iter__()


class ChoicesCollator:
    """TRL's collator, each example's choices (token ids) and gold index carried beside its batch."""

    def __init__(self, collate):
        self.collate = collate

    def __call__(self, examples: list[dict]) -> dict:
        batch = self.collate([{k: v for k, v in e.items() if k not in (CHOICE_IDS, GOLD)} for e in examples])
        if examples and CHOICE_IDS in examples[0]:
            batch[CHOICE_IDS] = [e[CHOICE_IDS] for e in examples]
            batch[GOLD] = torch.tensor([e[GOLD] for e in examples])
        return batch


def prompt_lengths(labels: torch.Tensor) -> list[int]:
    """Each row's prompt length: the position of its first labelled token."""
    return (labels != -100).int().argmax(-1).tolist()


class SmalltuneTrainer(SFTTrainer):
    """TRL's SFTTrainer with a loss that builds logits only at labelled positions (train.logits: labelled).

    With a 151,936-token vocabulary the prompt's logits would be the largest tensor of a small model's step.
    On CUDA with Triton, TRL's fused LM head already skips them; elsewhere (CPU) it scores every position, so
    this loss passes the label mask to the model as `logits_to_keep`: the call goes through the DDP / FSDP /
    PEFT wrappers as usual and the LM head projects the answer positions only. Token accuracy, entropy and
    the token count are logged under TRL's names.

    With `share_prefix` (train.share_prefix; `run.shares_prefix` decides) the opening every row of a training
    batch has in common runs once for the batch (`answer_logits`); a task's system prompt, instruction and label
    list are often most of a short example.

    With `uncast_lora_inputs` (bf16 autocast, no LoRA dropout), training and evaluation steps (forward, backward
    and any recomputation) feed the LoRA layers their bf16 input as it is: peft would copy it to the adapter's
    float32 and autocast would copy it straight back to bf16 for the same matmul (about a tenth of a CPU step),
    the same numbers either way. With dropout the mask is drawn on the float32 copy, as peft does. Generation
    outside the steps keeps peft's cast.

    With `choice_loss` (train.loss: choices) a training step's loss is the cross-entropy of each example's gold
    answer among its choices, scored by `choice_log_probs` as inference scores them, averaged over the step's
    examples; evaluation steps keep the answer-token loss.
    """

    def __init__(self, *args, labelled_logits: bool = True, uncast_lora_inputs: bool = False,
                 share_prefix: bool = False, choice_loss: bool = False, **kwargs):
        super().__init__(*args, **kwargs)
        self.labelled_logits = labelled_logits
        self.uncast_lora_inputs = uncast_lora_inputs
        self.share_prefix = share_prefix
        self.choice_loss = choice_loss
        if choice_loss:
            self.data_collator = ChoicesCollator(self.data_collator)

    def _set_signature_columns_if_needed(self):
        super()._set_signature_columns_if_needed()
        if self.choice_loss and CHOICE_IDS not in self._signature_columns:
            self._signature_columns = [*self._signature_columns, CHOICE_IDS, GOLD]

    def _shared_prefix(self, inputs: dict, keep: torch.Tensor) -> int:
        """The batch's shared prefix length in a training step that shares it (`share_prefix`), else 0."""
        if not (self.share_prefix and self.model.training):
            return 0
        return shared_prefix_length(inputs["input_ids"], inputs.get("attention_mask"), keep)

    def _get_train_sampler(self, train_dataset=None):
        sampler = super()._get_train_sampler(train_dataset)
        if isinstance(sampler, LengthGroupedSampler):
            seed = self.args.seed if self.args.data_seed is None else self.args.data_seed
            return EpochSeededLengthGroupedSampler(sampler, seed)
        return sampler

    def training_step(self, model, inputs, num_items_in_batch=None):
        with disable_input_dtype_casting(model, active=self.uncast_lora_inputs):
            return super().training_step(model, inputs, num_items_in_batch)

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
        with disable_input_dtype_casting(model, active=self.uncast_lora_inputs):
            return super().prediction_step(model, inputs, prediction_loss_only, ignore_keys)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        choice_ids, gold = inputs.pop(CHOICE_IDS, None), inputs.pop(GOLD, None)
        if choice_ids is not None and self.model.training and not return_outputs:
            return self._choice_loss(model, inputs, choice_ids, gold)
        trl_loss = not self.labelled_logits or _trl_head_is_labelled_only(inputs["input_ids"].device)
        if trl_loss or return_outputs or self.aux_loss_enabled:
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        keep, targets = labelled_positions(inputs["labels"])
        logits = answer_logits(model, inputs, keep, self._shared_prefix(inputs, keep))
        if logits.dim() != 2 or logits.shape[0] != targets.numel():
            raise ModelError(
                f"{type(self.model).__name__} does not return logits for selected positions only; set train.logits: trl"
            )
        log_probs = torch.log_softmax(logits.float(), dim=-1)
        del logits
        nll = -log_probs.gather(-1, targets[:, None]).sum()
        # normalised like TRL's loss: by the labelled tokens of the whole optimizer step, on every rank
        count = targets.numel() if num_items_in_batch is None else num_items_in_batch
        loss = nll / torch.as_tensor(count).clamp(min=1)
        if self.args.average_tokens_across_devices and num_items_in_batch is not None:
            loss = loss * self.accelerator.num_processes
        self._log_answer_metrics(log_probs.detach(), targets, inputs)
        return loss

    def _choice_loss(self, model, inputs: dict, choice_ids: list[list[list[int]]], gold: torch.Tensor) -> torch.Tensor:
        """The gold choices' cross-entropy among their records' choices, normalised by the optimizer step's
        examples (as the answer loss is by its tokens); logs the share whose gold choice scores highest."""
        prompts = [row[:n].tolist() for row, n in zip(inputs["input_ids"], prompt_lengths(inputs["labels"]))]
        scores = choice_log_probs(model, prompts, choice_ids, self.processing_class.pad_token_id)
        rows = torch.split(scores, [len(options) for options in choice_ids])
        nll = -torch.stack([row.log_softmax(0)[g] for row, g in zip(rows, gold.tolist())]).sum()
        step_examples = self.args.per_device_train_batch_size * self.args.gradient_accumulation_steps
        right = sum(int(row.argmax()) == g for row, g in zip(rows, gold.tolist()))
        metrics = self._metrics["train"]
        metrics["choice_accuracy"].append(right / len(rows))
        self._count_train_tokens(inputs)
        metrics["num_tokens"] = [self._total_train_tokens]
        return nll / step_examples

    def _log_answer_metrics(self, log_probs: torch.Tensor, targets: torch.Tensor, inputs: dict) -> None:
        """TRL's per-step metrics (mean_token_accuracy, entropy, num_tokens) from the answer positions' log-probs."""
        mode = "train" if self.model.training else "eval"
        gather = self.accelerator.gather_for_metrics
        count = gather(torch.tensor(targets.numel(), device=targets.device)).sum()
        correct = gather((log_probs.argmax(-1) == targets).sum()).sum()
        entropy = gather(-(log_probs.exp() * log_probs).sum()).sum()
        metrics = self._metrics[mode]
        metrics["mean_token_accuracy"].append((correct / count).item() if count > 0 else 0.0)
        metrics["entropy"].append((entropy / count).item() if count > 0 else 0.0)
        if mode == "train":
            self._count_train_tokens(inputs)
        metrics["num_tokens"] = [self._total_train_tokens]

    def _count_train_tokens(self, inputs: dict) -> None:
        """Add the batch's unpadded tokens, over all processes, to TRL's running `num_tokens`."""
        ids = inputs["input_ids"]
        seen = inputs["attention_mask"].sum() if "attention_mask" in inputs else torch.tensor(ids.numel(), device=ids.device)
        self._total_train_tokens += self.accelerator.gather_for_metrics(seen).sum().item()
