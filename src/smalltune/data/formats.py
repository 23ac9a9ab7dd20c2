"""Data formats: how a row of a data file holds a record, read AND written the same way.

A format reads one row (a dict from `readers`) into a `Record`'s fields, raising `RecordProblem` with a
message that names the field, and writes a record back as a row that it reads again unchanged. In the alpaca
and columns formats a row without its input text may carry the page instead, as HTML in an `html` column: the
input is then the page's visible text (`data.html.page_text`), and the `html` column stays in `Record.extra`. `load_records`,
`smalltune label` and `smalltune data convert` all go through these classes; a new format is one class
here (or in a module of its own) plus one line in `smalltune.registry.FORMATS`.
"""

from __future__ import annotations

import json
import re
from typing import Any

from smalltune.data.html import page_text
from smalltune.data.records import Record, RecordProblem

ROLES = ("system", "user", "assistant")
PAGE_KEY = "html"  # the column holding a record's page, read when its input text is absent
_LABEL_SEPARATORS = re.compile(r"[,，、|;；]")


# ---- field readers shared by the formats ------------------------------------------------------


def optional_text(row: dict, key: str) -> str | None:
    """The text under key, or None when absent, null or blank."""
    value = row.get(key)
    if value is None:
        return None
    if not isinstance(value, str):
        raise RecordProblem(f"'{key}' must be text, got {type(value).__name__}")
    return value if value.strip() else None


def input_or_page(row: dict, key: str) -> str | None:
    """The text under key; when that is absent or blank, the visible text of the page in the row's `html`
    column (text, or bytes from a Parquet binary column); None when there is neither."""
    text = optional_text(row, key)
    page = row.get(PAGE_KEY)
    if text is not None or page is None:
        return text
    if not isinstance(page, (str, bytes)):
        raise RecordProblem(f"'{PAGE_KEY}' must be the page's HTML as text, got {type(page).__name__}")
    text = page_text(page)
    if not text:
        raise RecordProblem(f"'{PAGE_KEY}' has no visible text (an empty page, or only script and style)")
    return text


def output_value(row: dict, key: str, required: bool) -> str | dict | None:
    """A text or a JSON object; None only when outputs are not required."""
    value = row.get(key)
    if isinstance(value, dict) or (isinstance(value, str) and value.strip()):
        return value
    if value is not None and not isinstance(value, str):
        raise RecordProblem(f"'{key}' must be text or a JSON object, got {type(value).__name__} (quote it)")
    if required:
        raise RecordProblem(f"missing '{key}' (add the expected answer)" if value is None
                            else f"'{key}' is empty (add the expected answer)")
    return None


def candidate_labels(row: dict, key: str) -> tuple[str, ...]:
    """Label choices from a list or from text separated by , ， 、 | or ;."""
    value = row.get(key)
    if isinstance(value, str):
        items = _LABEL_SEPARATORS.split(value)
    elif isinstance(value, list) and all(isinstance(v, str) for v in value):
        items = value
    elif value is None:
        raise RecordProblem(f"missing '{key}' (list the label choices)")
    else:
        raise RecordProblem(f"'{key}' must be a list of labels or comma-separated text, got {type(value).__name__}")
    labels = tuple(s.strip() for s in items if s.strip())
    if not labels:
        raise RecordProblem(f"'{key}' is empty (list the label choices)")
    return labels


def turns_from_pairs(value: Any) -> tuple[dict, ...]:
    """LLaMA-Factory history, [[user, assistant], ...], as role/content messages."""
    if value is None:
        return ()
    if not isinstance(value, list):
        raise RecordProblem("'history' must be a list of [user, assistant] pairs")
    turns: list[dict] = []
    for i, pair in enumerate(value):
        if not (isinstance(pair, (list, tuple)) and len(pair) == 2 and all(isinstance(t, str) for t in pair)):
            raise RecordProblem(f"'history'[{i}] must be a [user, assistant] pair of texts")
        turns += [{"role": "user", "content": pair[0]}, {"role": "assistant", "content": pair[1]}]
    return tuple(turns)


def pairs_from_turns(turns: tuple[dict, ...]) -> list[list[str]]:
    """Role/content messages (user, assistant, ...) as LLaMA-Factory history pairs: the inverse of `turns_from_pairs`."""
    texts = [turn["content"] for turn in turns]
    return [list(pair) for pair in zip(texts[::2], texts[1::2])]


def _as_text(output: str | dict) -> str:
    """An answer as message text: a JSON object in the canonical form (field order kept, UTF-8)."""
    return output if isinstance(output, str) else json.dumps(output, ensure_ascii=False)


# ---- the formats --------------------------------------------------------------------------------


class Format:
    """How one row holds one record. `columns` is the task file's `data.columns` mapping."""

    def id_key(self, columns: dict[str, str]) -> str:
        """The row key holding the record id."""
        return "id"

    def read_keys(self, columns: dict[str, str]) -> set[str]:
        """The row keys this format reads; the others are kept as `Record.extra`."""
        raise NotImplementedError

    def read(self, row: dict, columns: dict[str, str], require_output: bool) -> dict[str, Any]:
        """The Record fields (input, output, instruction, system, history, candidates) of one row."""
        raise NotImplementedError

    def write(self, record: Record, columns: dict[str, str]) -> dict[str, Any]:
        """The row that `read` turns back into this record (its extra columns not included)."""
        raise NotImplementedError


class Alpaca(Format):
    """instruction/input/output[/system/history]; an empty input takes the visible text of the `html` page, or
    without one the instruction's text. A `candidates` mapping in `columns` names the column of per-record
    label choices."""

    def read_keys(self, columns: dict[str, str]) -> set[str]:
        mapped = {columns["candidates"]} if "candidates" in columns else set()
        return {"id", "instruction", "input", "output", "system", "history", *mapped}

    def read(self, row: dict, columns: dict[str, str], require_output: bool) -> dict[str, Any]:
        instruction = optional_text(row, "instruction")
        text = input_or_page(row, "input")
        if text is None and instruction is None:
            raise RecordProblem("'input' is empty and so is 'instruction' (give the text in 'input', or the page "
                                f"as HTML in '{PAGE_KEY}')")
        if text is None:
            text, instruction = instruction, None
        fields = {"input": text, "instruction": instruction, "system": optional_text(row, "system"),
                  "output": output_value(row, "output", require_output), "history": turns_from_pairs(row.get("history"))}
        if "candidates" in columns:
            fields["candidates"] = candidate_labels(row, columns["candidates"])
        return fields

    def write(self, record: Record, columns: dict[str, str]) -> dict[str, Any]:
        row = {"id": record.id, "system": record.system, "instruction": record.instruction, "input": record.input,
               "history": pairs_from_turns(record.history) or None,
               columns.get("candidates", "candidates"): list(record.candidates) or None, "output": record.output}
        return {key: value for key, value in row.items() if value is not None}


class Messages(Format):
    """OpenAI-style messages: [system], user, assistant, ..., ending with the answer."""

    def read_keys(self, columns: dict[str, str]) -> set[str]:
        return {"id", "messages"}

    def read(self, row: dict, columns: dict[str, str], require_output: bool) -> dict[str, Any]:
        messages = row.get("messages")
        if messages is None:
            raise RecordProblem("missing 'messages' (a list of {role, content})")
        if not isinstance(messages, list) or not messages:
            raise RecordProblem("'messages' must be a non-empty list of {role, content}")
        for i, message in enumerate(messages):
            _check_message(i, message)
        start = 1 if messages[0]["role"] == "system" else 0
        turns = messages[start:]
        for j, message in enumerate(turns):
            expected = "user" if j % 2 == 0 else "assistant"
            if message["role"] != expected:
                raise RecordProblem(f"'messages'[{start + j}] has role '{message['role']}' where '{expected}' was "
                                    "expected; after an optional leading system message, roles must alternate user/assistant")
        if not turns:
            raise RecordProblem("'messages' has no user message")
        output = None
        if turns[-1]["role"] == "assistant":
            output, turns = turns[-1]["content"], turns[:-1]
        elif require_output:
            raise RecordProblem("'messages' must end with an assistant message (the expected answer)")
        return {"input": turns[-1]["content"], "output": output, "system": messages[0]["content"] if start else None,
                "history": tuple({"role": m["role"], "content": m["content"]} for m in turns[:-1])}

    def write(self, record: Record, columns: dict[str, str]) -> dict[str, Any]:
        head = [{"role": "system", "content": record.system}] if record.system else []
        answer = [{"role": "assistant", "content": _as_text(record.output)}] if record.output is not None else []
        return {"id": record.id, "messages": [*head, *record.history, {"role": "user", "content": record.input}, *answer]}


def _check_message(i: int, message: Any) -> None:
    """One {role, content} item with a known role and non-empty text."""
    if not isinstance(message, dict):
        raise RecordProblem(f"'messages'[{i}] must be an object with 'role' and 'content'")
    if message.get("role") not in ROLES:
        raise RecordProblem(f"'messages'[{i}] has role {message.get('role')!r}; use system/user/assistant")
    content = message.get("content")
    if not isinstance(content, str):
        raise RecordProblem(f"'messages'[{i}] content must be text, got {type(content).__name__}")
    if not content.strip():
        raise RecordProblem(f"'messages'[{i}] content is empty")


class Columns(Format):
    """Named columns mapped to our roles; input and output default to columns of the same name. A row without
    its input text may carry the page as HTML in an `html` column."""

    @staticmethod
    def _names(columns: dict[str, str]) -> dict[str, str]:
        return {"id": "id", "input": "input", "output": "output", **columns}

    def id_key(self, columns: dict[str, str]) -> str:
        return self._names(columns)["id"]

    def read_keys(self, columns: dict[str, str]) -> set[str]:
        return set(self._names(columns).values())

    def read(self, row: dict, columns: dict[str, str], require_output: bool) -> dict[str, Any]:
        name = self._names(columns)
        text = input_or_page(row, name["input"])
        if text is None:
            problem = f"missing '{name['input']}'" if row.get(name["input"]) is None else f"'{name['input']}' is empty"
            raise RecordProblem(f"{problem} (add the text, or the page as HTML in '{PAGE_KEY}')")
        fields: dict[str, Any] = {"input": text,
                                  "output": output_value(row, name["output"], require_output)}
        for role in ("instruction", "system"):
            if role in name:
                fields[role] = optional_text(row, name[role])
        if "candidates" in name:
            fields["candidates"] = candidate_labels(row, name["candidates"])
        return fields

    def write(self, record: Record, columns: dict[str, str]) -> dict[str, Any]:
        name = self._names(columns)
        row = {name["id"]: record.id, name["input"]: record.input, name["output"]: record.output}
        for role in ("instruction", "system"):
            if role in name and getattr(record, role) is not None:
                row[name[role]] = getattr(record, role)
        if "candidates" in name:
            row[name["candidates"]] = list(record.candidates)
        return row
