"""Messages to tokens with the model's own chat template.

One rendering (`render_prompt`) and one shortening rule build every prompt, for training and inference
alike: `prompt_ids` for one record, `prompts_for` for many. Training examples are prompt + answer +
end-of-turn, with labels on the answer and end-of-turn only. When an example is too long, the record's input
is shortened; the answer never is. Many records are tokenised in one call (the fast tokenizer's batch).
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Sequence
from dataclasses import dataclass

from transformers import PreTrainedTokenizerBase

from smalltune.config import TaskConfig
from smalltune.data.records import Record
from smalltune.tasks.base import TaskKind

_SENTINEL = "\u2063SMALLTUNE\u2063"


def render_prompt(tokenizer: PreTrainedTokenizerBase, messages: list[dict], enable_thinking: bool) -> str:
    """The prompt text, ending where the assistant's answer starts (thinking on or off as asked)."""
    return tokenizer.apply_chat_template(
        messages, tokenize=False, add_generation_prompt=True, enable_thinking=enable_thinking
    )


def end_of_turn(tokenizer: PreTrainedTokenizerBase) -> str:
    """The text the template puts after an assistant answer (e.g. `<|im_end|>`), read off the template."""
    return _end_of_turn(tokenizer, tokenizer.chat_template)


@functools.lru_cache(maxsize=8)
def _end_of_turn(tokenizer: PreTrainedTokenizerBase, template: str) -> str:
    text = tokenizer.apply_chat_template(
        [{"role": "user", "content": "x"}, {"role": "assistant", "content": _SENTINEL}], tokenize=False
    )
    tail = text[text.rindex(_SENTINEL) + len(_SENTINEL) :].rstrip()
    if not tail:
        tail = tokenizer.eos_token or ""
    if not tail:
        raise ValueError("the chat template closes no assistant turn and the tokenizer has no eos token")
    return tail


def end_of_turn_ids(tokenizer: PreTrainedTokenizerBase) -> list[int]:
    """Token ids that end generation: the template's end-of-turn token plus eos."""
    ids = tokenizer(end_of_turn(tokenizer), add_special_tokens=False)["input_ids"][:1]
    if tokenizer.eos_token_id is not None and tokenizer.eos_token_id not in ids:
        ids.append(tokenizer.eos_token_id)
    return ids


def _shortened(tokenizer: PreTrainedTokenizerBase, record: Record, excess: int) -> Record:
    """The record with its input cut by `excess` tokens (plus a small margin) at the end."""
    ids = tokenizer(record.input, add_special_tokens=False)["input_ids"]
    keep = max(0, len(ids) - excess - 2)
    return dataclasses.replace(record, input=tokenizer.decode(ids[:keep]))


def with_shots(task: TaskKind, record: Record, shots: Sequence[Record]) -> list[dict[str, str]]:
    """The record's messages with solved examples (user turn, reference answer) before its user turn."""
    messages = task.messages(record)
    if not shots:
        return messages
    solved = []
    for shot in shots:
        solved += [m for m in task.messages(shot) if m["role"] != "system"]
        solved.append({"role": "assistant", "content": task.answer(shot)})
    head = [m for m in messages[:1] if m["role"] == "system"]
    return [*head, *solved, *messages[len(head):]]


def _token_ids(tokenizer: PreTrainedTokenizerBase, texts: list[str]) -> list[list[int]]:
    """Token ids of many texts in one call: the fast tokenizer encodes them in parallel, on every core."""
    return tokenizer(texts, add_special_tokens=False)["input_ids"] if texts else []


def _prompt_texts(
    tokenizer: PreTrainedTokenizerBase, task: TaskKind, records: Sequence[Record], enable_thinking: bool,
    shots: Sequence[Record] = (),
) -> list[str]:
    return [render_prompt(tokenizer, with_shots(task, r, shots), enable_thinking) for r in records]


def _fit(
    tokenizer: PreTrainedTokenizerBase, task: TaskKind, record: Record, ids: list[int], budget: int,
    enable_thinking: bool, shots: Sequence[Record] = (),
) -> tuple[list[int], bool]:
    """The record's prompt ids (`ids`, as first rendered) within `budget`: its input shortened until they fit."""
    truncated = False
    for _ in range(5):
        if len(ids) <= budget or not record.input:
            break
        record, truncated = _shortened(tokenizer, record, len(ids) - budget), True
        ids = _token_ids(tokenizer, _prompt_texts(tokenizer, task, [record], enable_thinking, shots))[0]
    if len(ids) > budget:
        raise ValueError(f"the prompt needs more than {budget} tokens even with the input shortened")
    return ids, truncated


def prompt_ids(
    tokenizer: PreTrainedTokenizerBase,
    task: TaskKind,
    record: Record,
    budget: int,
    enable_thinking: bool,
    shots: Sequence[Record] = (),
) -> tuple[list[int], bool]:
    """Token ids of the record's prompt within `budget` tokens, and whether the input had to be shortened.

    `shots` are solved examples shown before the record (few-shot prompting; training uses none).
    Raises ValueError when the prompt does not fit even with an empty input.
    """
    (ids,) = _token_ids(tokenizer, _prompt_texts(tokenizer, task, [record], enable_thinking, shots))
    return _fit(tokenizer, task, record, ids, budget, enable_thinking, shots)


def prompts_for(
    tokenizer: PreTrainedTokenizerBase, task: TaskKind, records: Sequence[Record], config: TaskConfig,
    shots: Sequence[Record] = (), budget: int | None = None,
) -> tuple[list[list[int]], list[bool]]:
    """Prompt ids of many records within `budget` tokens (default: the task's model.max_length), tokenised in one
    batch, and which inputs were shortened."""
    thinking, budget = config.model.enable_thinking, budget or config.model.max_length
    first = _token_ids(tokenizer, _prompt_texts(tokenizer, task, records, thinking, shots))
    built = [_fit(tokenizer, task, r, ids, budget, thinking, shots) for r, ids in zip(records, first)]
    return [ids for ids, _ in built], [cut for _, cut in built]


@dataclass(frozen=True)
class Example:
    """One tokenised training example."""

    input_ids: list[int]
    completion_mask: list[int]
    truncated: bool


def answer_ids(tokenizer: PreTrainedTokenizerBase, task: TaskKind, records: Sequence[Record]) -> list[list[int]]:
    """Each record's answer + end-of-turn ids, the completion training labels (and classification scores),
    tokenised in one batch."""
    closing = end_of_turn(tokenizer)
    return _token_ids(tokenizer, [task.answer(r) + closing for r in records])


def _answer_and_prompt_ids(
    tokenizer: PreTrainedTokenizerBase, task: TaskKind, records: Sequence[Record], enable_thinking: bool
) -> tuple[list[list[int]], list[list[int]]]:
    """Each record's answer + end-of-turn ids and its full prompt's ids, each list tokenised in one batch."""
    answers = answer_ids(tokenizer, task, records)
    return answers, _token_ids(tokenizer, _prompt_texts(tokenizer, task, records, enable_thinking))


def _example(
    tokenizer: PreTrainedTokenizerBase, task: TaskKind, record: Record, completion: list[int], prompt: list[int],
    max_length: int, enable_thinking: bool,
) -> Example:
    if not completion:
        raise ValueError("the answer has no tokens to learn")
    budget = max_length - len(completion)
    if budget <= 0:
        raise ValueError(f"the answer alone is {len(completion)} tokens, over max_length {max_length}")
    prompt, truncated = _fit(tokenizer, task, record, prompt, budget, enable_thinking)
    return Example(prompt + completion, [0] * len(prompt) + [1] * len(completion), truncated)


def encode_example(
    tokenizer: PreTrainedTokenizerBase, task: TaskKind, record: Record, max_length: int, enable_thinking: bool
) -> Example:
    """prompt + answer + end-of-turn, labels on answer and end-of-turn; raises ValueError if the answer cannot fit."""
    (completion,), (prompt,) = _answer_and_prompt_ids(tokenizer, task, [record], enable_thinking)
    return _example(tokenizer, task, record, completion, prompt, max_length, enable_thinking)


def encode_examples(
    tokenizer: PreTrainedTokenizerBase, task: TaskKind, records: list[Record], max_length: int, enable_thinking: bool
) -> tuple[list[Example], list[str]]:
    """Encode many records (tokenised in batches); records that cannot fit are reported as `file:line: why`, not
    dropped silently."""
    examples, problems = [], []
    completions, prompts = _answer_and_prompt_ids(tokenizer, task, records, enable_thinking)
    for record, completion, prompt in zip(records, completions, prompts):
        try:
            examples.append(_example(tokenizer, task, record, completion, prompt, max_length, enable_thinking))
        except ValueError as exc:
            problems.append(f"{record.where}: {exc} (raise model.max_length)")
    return examples, problems
