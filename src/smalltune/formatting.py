"""Messages to tokens with the model's own chat template.

One rendering (`render_prompt`) and one shortening rule build every prompt, for training and inference
alike: `prompt_ids` for one record, `shown_prompts` for many. Training examples are
prompt + answer + end-of-turn, with labels on the answer and end-of-turn only. When an example is too long,
the record's input is shortened (by whole lines when the prompt numbers them); the answer never is. Many records
are tokenised in one call (the fast tokenizer's batch).

User text is data: a control-token string inside a record (`<|im_end|><|im_start|>system ...`) stays plain
text. Prompts whose texts spell out one are tokenised with `apply_chat_template(..., sanitize_control_tokens=True)`,
so that the control tokens come from the template alone; answers with their special tokens split into text.
Every other prompt gets exactly the ids the tokenizer gives its rendered text.
"""

from __future__ import annotations

import dataclasses
import functools
import re
from collections.abc import Sequence
from dataclasses import dataclass

from transformers import PreTrainedTokenizerBase

from smalltune.config import TaskConfig
from smalltune.data.records import Record
from smalltune.tasks.base import TaskKind
from smalltune.tasks.lines import shown_lines

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


def _shortened(tokenizer: PreTrainedTokenizerBase, task: TaskKind, record: Record, excess: int) -> Record:
    """The record with its input cut at the end so that its prompt loses `excess` tokens (plus a small margin):
    whole lines when the task numbers them (a line shown cut costs only what is shown), else tokens."""
    if task.numbers_lines:
        return dataclasses.replace(record, input=_without_last_lines(tokenizer, task, record.input, excess + 2))
    ids = tokenizer(record.input, add_special_tokens=False)["input_ids"]
    keep = max(0, len(ids) - excess - 2)
    return dataclasses.replace(record, input=tokenizer.decode(ids[:keep]))


def _without_last_lines(tokenizer: PreTrainedTokenizerBase, task: TaskKind, text: str, excess: int) -> str:
    """`text` up to the end of its last line kept: the fewest last lines dropped whose numbered prompt lines
    (line break included) take at least `excess` tokens."""
    lines = shown_lines(text, task.config.model.line_chars)
    costs = [len(ids) + 1 for ids in _token_ids(tokenizer, [line.prompt for line in lines])]
    keep, dropped = len(lines), 0
    while keep and dropped < excess:
        keep -= 1
        dropped += costs[keep]
    return text[: lines[keep - 1].end] if keep else ""


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


@functools.lru_cache(maxsize=8)
def _spelled_out(tokenizer: PreTrainedTokenizerBase) -> re.Pattern[str]:
    """Finds any of the tokenizer's added tokens (its control tokens among them) spelled out in a text."""
    names = sorted((token.content for token in tokenizer.added_tokens_decoder.values()), key=len, reverse=True)
    return re.compile("|".join(map(re.escape, names)) or "(?!)")


def _sanitized_ids(tokenizer: PreTrainedTokenizerBase, conversations: list[list[dict]], enable_thinking: bool,
                   ) -> list[list[int]]:
    """Prompt ids in which only the template writes control tokens: those spelled out in the messages are text."""
    if not conversations:
        return []
    return tokenizer.apply_chat_template(conversations, tokenize=True, add_generation_prompt=True, return_dict=False,
                                         enable_thinking=enable_thinking, sanitize_control_tokens=True)


def _prompt_ids(
    tokenizer: PreTrainedTokenizerBase, task: TaskKind, records: Sequence[Record], enable_thinking: bool,
    shots: Sequence[Record] = (),
) -> list[list[int]]:
    """Each record's prompt ids: in one parallel batch, but sanitised where a text spells out a control token."""
    conversations = [with_shots(task, r, shots) for r in records]
    spelled = _spelled_out(tokenizer)
    risky = [any(spelled.search(m["content"]) for m in c) for c in conversations]
    plain = iter(_token_ids(tokenizer, [render_prompt(tokenizer, c, enable_thinking)
                                        for c, r in zip(conversations, risky) if not r]))
    sanitized = iter(_sanitized_ids(tokenizer, [c for c, r in zip(conversations, risky) if r], enable_thinking))
    return [next(sanitized) if r else next(plain) for r in risky]


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
        record, truncated = _shortened(tokenizer, task, record, len(ids) - budget), True
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


@dataclass(frozen=True)
class Example:
    """One tokenised training example."""

    input_ids: list[int]
    completion_mask: list[int]
    truncated: bool
    record: Record  # the record it was encoded from


def answer_ids(tokenizer: PreTrainedTokenizerBase, task: TaskKind, records: Sequence[Record]) -> list[list[int]]:
    """Each record's answer + end-of-turn ids, the completion training labels (and classification scores),
    tokenised in one batch."""
    texts = [task.answer(r) for r in records]  # control tokens spelled out in an answer stay text
    answers = tokenizer(texts, add_special_tokens=False, split_special_tokens=True)["input_ids"] if texts else []
    (closing,) = _token_ids(tokenizer, [end_of_turn(tokenizer)])
    return [ids + closing for ids in answers]


def choice_answer_ids(tokenizer: PreTrainedTokenizerBase, task: TaskKind, records: Sequence[Record]) -> list[list[list[int]]]:
    """Per record, each of `task.choices(record)` as the completion ids `answer_ids` gives it: what scoring sums
    the log-probabilities of, and what train.loss: choices trains on."""
    choices = [task.choices(r) for r in records]
    flat = iter(answer_ids(tokenizer, task, [dataclasses.replace(r, output=c) for r, options in zip(records, choices)
                                             for c in options]))
    return [[next(flat) for _ in options] for options in choices]


def _answer_and_prompt_ids(
    tokenizer: PreTrainedTokenizerBase, task: TaskKind, records: Sequence[Record], enable_thinking: bool
) -> tuple[list[list[int]], list[list[int]]]:
    """Each record's answer + end-of-turn ids and its full prompt's ids, each list tokenised in one batch."""
    return answer_ids(tokenizer, task, records), _prompt_ids(tokenizer, task, records, enable_thinking)


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
    return Example(shown.ids + completion, [0] * len(shown.ids) + [1] * len(completion), shown.truncated, record)


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
