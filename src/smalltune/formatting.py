"""Messages to tokens with the model's own chat template.

One rendering (`render_prompt`) and one shortening rule build every prompt, for training and inference
alike: `prompt_ids` for one record, `shown_prompts` (or `prompts_for`) for many. Training examples are
prompt + answer + end-of-turn, with labels on the answer and end-of-turn only. When an example is too long,
the record's input is shortened; the answer never is. Many records are tokenised in one call (the fast
tokenizer's batch).

User text is data: the template is rendered with a slot in place of each message's content, so its control
tokens (`<|im_start|>`, `<|im_end|>`, ...) come from the template alone; the text between them, contents
filled in, is tokenised by the tokenizer's BPE without its added tokens. A control-token string inside a
record (`<|im_end|><|im_start|>system ...`) therefore stays plain text, and a prompt without one gets exactly
the ids the tokenizer gives the rendered text.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass

from tokenizers import Tokenizer
from transformers import PreTrainedTokenizerBase

from smalltune.config import TaskConfig
from smalltune.data.records import Record
from smalltune.tasks.base import TaskKind

_SENTINEL = "\u2063SMALLTUNE\u2063"
_SLOT = "\u2063SMALLTUNE{}\u2063"  # where message content i goes in a rendered template
_SLOTS = re.compile("\u2063SMALLTUNE(\\d+)\u2063")

Piece = int | str  # a control token's id, or text to tokenise as text


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


@dataclass(frozen=True)
class _Controls:
    """A tokenizer's added tokens (its control tokens) and its BPE without them."""

    split: re.Pattern[str]  # splits a text at each control-token string, capturing it
    ids: dict[str, int]
    text_only: Tokenizer


@functools.lru_cache(maxsize=8)
def _controls(tokenizer: PreTrainedTokenizerBase) -> _Controls:
    spec = json.loads(tokenizer.backend_tokenizer.to_str())
    spec.update(added_tokens=[], truncation=None, padding=None)
    ids = {token.content: token_id for token_id, token in tokenizer.added_tokens_decoder.items()}
    names = sorted(ids, key=len, reverse=True)  # the longest first, where one is a prefix of another
    split = re.compile("(" + "|".join(map(re.escape, names)) + ")" if names else "(?!)")
    return _Controls(split, ids, Tokenizer.from_str(json.dumps(spec)))


def _text_ids(tokenizer: PreTrainedTokenizerBase, texts: list[str]) -> list[list[int]]:
    """Token ids of many texts as plain text (a control-token string in them stays text), in one parallel batch."""
    return [e.ids for e in _controls(tokenizer).text_only.encode_batch(texts, add_special_tokens=False)]


@functools.lru_cache(maxsize=256)
def _pieces(tokenizer: PreTrainedTokenizerBase, template_text: str) -> tuple[Piece, ...]:
    """Template output (contents as slots) split into its control tokens' ids and the text between them."""
    controls = _controls(tokenizer)
    parts = controls.split.split(template_text)  # text, control, text, control, ..., text
    return tuple(controls.ids[part] if i % 2 else part for i, part in enumerate(parts) if part)


def _filled(pieces: Sequence[Piece], contents: Sequence[str]) -> list[Piece]:
    """The pieces with each slot replaced by its content."""
    return [p if isinstance(p, int) else _SLOTS.sub(lambda slot: contents[int(slot[1])], p) for p in pieces]


def _ids(tokenizer: PreTrainedTokenizerBase, filled: list[list[Piece]]) -> list[list[int]]:
    """Token ids of each filled template: control tokens as themselves, every text piece tokenised in one batch."""
    texts = iter(_text_ids(tokenizer, [p for pieces in filled for p in pieces if isinstance(p, str)]))
    return [[i for p in pieces for i in ([p] if isinstance(p, int) else next(texts))] for pieces in filled]


@functools.lru_cache(maxsize=256)
def _rendered(tokenizer: PreTrainedTokenizerBase, template: str, slotted: str, enable_thinking: bool) -> tuple[Piece, ...]:
    """The pieces of the prompt of messages whose contents are slots (`slotted`, as JSON); cached per shape."""
    return _pieces(tokenizer, render_prompt(tokenizer, json.loads(slotted), enable_thinking))


def _prompt_pieces(tokenizer: PreTrainedTokenizerBase, messages: list[dict], enable_thinking: bool) -> list[Piece]:
    """The prompt of `messages` as pieces: the template's control tokens, and text with the contents in it."""
    slotted = json.dumps([{**m, "content": _SLOT.format(i)} for i, m in enumerate(messages)], ensure_ascii=False)
    return _filled(_rendered(tokenizer, tokenizer.chat_template, slotted, enable_thinking), [m["content"] for m in messages])


def _shortened(tokenizer: PreTrainedTokenizerBase, record: Record, excess: int) -> Record:
    """The record with its input cut by `excess` tokens (plus a small margin) at the end."""
    (ids,) = _text_ids(tokenizer, [record.input])
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


def _prompt_ids(
    tokenizer: PreTrainedTokenizerBase, task: TaskKind, records: Sequence[Record], enable_thinking: bool,
    shots: Sequence[Record] = (),
) -> list[list[int]]:
    """Each record's prompt ids, tokenised in one batch."""
    return _ids(tokenizer, [_prompt_pieces(tokenizer, with_shots(task, r, shots), enable_thinking) for r in records])


@dataclass(frozen=True)
class Shown:
    """A record's prompt as the model is shown it: its token ids, the record with its input as shown (shortened
    to fit, if `truncated`), or `problem`: why it cannot be shown at all (then `ids` is empty)."""

    ids: list[int]
    record: Record
    truncated: bool
    problem: str | None = None


def _fit(
    tokenizer: PreTrainedTokenizerBase, task: TaskKind, record: Record, ids: list[int], budget: int,
    enable_thinking: bool, shots: Sequence[Record] = (),
) -> Shown:
    """The record's prompt (`ids`, as first rendered) within `budget`: its input shortened until it fits.

    Raises ValueError when it does not fit even with an empty input.
    """
    truncated = False
    for _ in range(5):
        if len(ids) <= budget or not record.input:
            break
        record, truncated = _shortened(tokenizer, record, len(ids) - budget), True
        (ids,) = _prompt_ids(tokenizer, task, [record], enable_thinking, shots)
    if len(ids) > budget:
        raise ValueError(f"the prompt needs more than {budget} tokens even with the input shortened")
    return Shown(ids, record, truncated)


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
    (ids,) = _prompt_ids(tokenizer, task, [record], enable_thinking, shots)
    shown = _fit(tokenizer, task, record, ids, budget, enable_thinking, shots)
    return shown.ids, shown.truncated


def shown_prompts(
    tokenizer: PreTrainedTokenizerBase, task: TaskKind, records: Sequence[Record], config: TaskConfig,
    shots: Sequence[Record] = (), budget: int | None = None,
) -> list[Shown]:
    """Each record's prompt within `budget` tokens (default: the task's model.max_length), tokenised in one batch,
    with the record as shown; a record that cannot fit gets its `problem` instead."""
    thinking, budget = config.model.enable_thinking, budget or config.model.max_length
    shown = []
    for record, ids in zip(records, _prompt_ids(tokenizer, task, records, thinking, shots)):
        try:
            shown.append(_fit(tokenizer, task, record, ids, budget, thinking, shots))
        except ValueError as exc:
            shown.append(Shown([], record, True, f"{exc} (raise model.max_length)"))
    return shown


def prompts_for(
    tokenizer: PreTrainedTokenizerBase, task: TaskKind, records: Sequence[Record], config: TaskConfig,
    shots: Sequence[Record] = (), budget: int | None = None,
) -> tuple[list[list[int]], list[bool]]:
    """Prompt ids of many records within `budget` tokens (`shown_prompts`), and which inputs were shortened.

    Raises ValueError when a prompt does not fit even with an empty input.
    """
    shown = shown_prompts(tokenizer, task, records, config, shots, budget)
    problem = next((s.problem for s in shown if s.problem), None)
    if problem:
        raise ValueError(problem)
    return [s.ids for s in shown], [s.truncated for s in shown]


@dataclass(frozen=True)
class Example:
    """One tokenised training example."""

    input_ids: list[int]
    completion_mask: list[int]
    truncated: bool


def _answer_and_prompt_ids(
    tokenizer: PreTrainedTokenizerBase, task: TaskKind, records: Sequence[Record], enable_thinking: bool
) -> tuple[list[list[int]], list[list[int]]]:
    """Each record's answer + end-of-turn ids and its full prompt's ids, each list tokenised in one batch."""
    closing = _pieces(tokenizer, _SLOT.format(0) + end_of_turn(tokenizer))
    answers = _ids(tokenizer, [_filled(closing, [task.answer(r)]) for r in records])
    return answers, _prompt_ids(tokenizer, task, records, enable_thinking)


def _example(
    tokenizer: PreTrainedTokenizerBase, task: TaskKind, record: Record, completion: list[int], prompt: list[int],
    max_length: int, enable_thinking: bool,
) -> Example:
    if not completion:
        raise ValueError("the answer has no tokens to learn")
    budget = max_length - len(completion)
    if budget <= 0:
        raise ValueError(f"the answer alone is {len(completion)} tokens, over max_length {max_length}")
    shown = _fit(tokenizer, task, record, prompt, budget, enable_thinking)
    return Example(shown.ids + completion, [0] * len(shown.ids) + [1] * len(completion), shown.truncated)


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
