"""Typed extraction fields: what a value of each `FieldSpec` type is, in training data and in a model's answer.

One place says it for every stage: `check` (training data, labelled answers) asks `data_problem`, `parse` (model
answers, served ones too) tidies with `tidied` and then asks `value_problem`, scoring compares with `same`,
the prompt describes each field with `hint`, and the teacher is asked for `json_schema` properties.
A `lines` field's value is its text here too; its answer, line ranges, is read and written by `tasks.lines`.
"""

from __future__ import annotations

import json
from typing import Any

from smalltune.config import FieldSpec
from smalltune.tasks.text import normalise, normalise_date

_EXPECTED = {"string": "a string", "list": "a list of strings", "integer": "a whole number", "number": "a number",
             "date": "a date (YYYY-MM-DD)", "boolean": "true or false",
             "lines": "a string (whole lines of the input)"}
_HINTS = {"list": "字符串列表，没有的填 []", "integer": "整数", "number": "数字", "date": "日期，写成 YYYY-MM-DD",
          "boolean": "true 或 false", "lines": "写所在行的行号范围（每行开头 [n] 中的 n）：[[起, 止], …]，没有的填 []"}


def expected(spec: FieldSpec) -> str:
    """What a value of the field is, in words: 'a list of strings', 'one of 低, 中, 高', '... or null'."""
    kind = f"one of {', '.join(spec.choices or ())}" if spec.type == "choice" else _EXPECTED[spec.type]
    return f"{kind} or null" if spec.optional else kind


def _shown(value: Any) -> str:
    """A value as JSON, cut at 60 characters (for messages)."""
    text = json.dumps(value, ensure_ascii=False)
    return text if len(text) <= 60 else text[:57] + "..."


def _of_type(spec: FieldSpec, value: Any) -> bool:
    """Whether a non-null value has the field's type."""
    if spec.type in ("string", "lines", "date"):
        return isinstance(value, str) and (spec.type != "date" or bool(normalise_date(value)))
    if spec.type == "list":
        return isinstance(value, list) and all(isinstance(item, str) for item in value)
    if spec.type == "choice":
        return value in (spec.choices or ())
    if spec.type == "boolean":
        return isinstance(value, bool)
    numbers = (int,) if spec.type == "integer" else (int, float)
    return isinstance(value, numbers) and not isinstance(value, bool) and value == value and abs(value) != float("inf")


def value_problem(spec: FieldSpec, value: Any) -> str | None:
    """Why `value` is not a value of the field's type ('expected a list of strings, got 3'), or None."""
    if (value is None and spec.optional) or (value is not None and _of_type(spec, value)):
        return None
    return f"expected {expected(spec)}, got {_shown(value)}"


def data_problem(spec: FieldSpec, value: Any) -> str | None:
    """`value_problem`, and what keeps a training answer canonical: list items non-empty and each listed once, null
    (not '') for an absent optional value, a non-optional date, number, boolean or choice always given."""
    problem = value_problem(spec, value)
    if problem:
        return problem + (" (optional: true lets a record have none)" if value is None else "")
    if spec.optional and value == "":
        return "write null for an absent optional value, not ''"
    if spec.type == "list":
        if "" in value:
            return "a list item is empty: leave it out"
        twice = next((item for i, item in enumerate(value) if item in value[:i]), None)
        if twice is not None:
            return f"{_shown(twice)} is listed twice: list each item once"
        if spec.max_items is not None and len(value) > spec.max_items:
            return f"{len(value)} items, more than max_items ({spec.max_items})"
    return None


def canonical(spec: FieldSpec, value: Any) -> Any:
    """The value as a training answer writes it: a date as YYYY-MM-DD; anything else as it is."""
    return normalise_date(value) if spec.type == "date" and value is not None else value


def tidied(spec: FieldSpec, value: Any) -> Any:
    """A model's value in canonical form where the slip is harmless: a list's repeated items dropped (the first
    kept), '' of an optional field as null, null of a string or list as '' or [], a readable date as YYYY-MM-DD;
    anything else as it is."""
    if spec.optional and value == "":
        return None
    if value is None and not spec.optional and spec.type in ("string", "list"):
        return absent(spec)
    if spec.type == "list" and isinstance(value, list):
        return list(dict.fromkeys(value))
    if spec.type == "date" and isinstance(value, str) and normalise_date(value):
        return normalise_date(value)
    return value


def absent(spec: FieldSpec) -> Any:
    """The value of a field an answer leaves out: null when optional, else '' (string, lines) or [] (list) or null."""
    if spec.optional:
        return None
    return {"string": "", "lines": "", "list": []}.get(spec.type)


def items(spec: FieldSpec, value: Any) -> list[str]:
    """The text a value holds, for grounding checks: a string's value, a list's items (none when empty or null)."""
    if spec.type == "list" and isinstance(value, list):
        return [item for item in value if isinstance(item, str) and item]
    return [value] if spec.type == "string" and isinstance(value, str) and value else []


def item_set(value: Any) -> set[str]:
    """A list value's items after `normalise`, as a set (empty for anything that is not a list of strings)."""
    if not isinstance(value, list):
        return set()
    return {normalise(item) for item in value if isinstance(item, str)}


def same(spec: FieldSpec, prediction: Any, gold: Any) -> bool:
    """Whether a predicted value equals the reference: strings (and lines) after `normalise`, lists as sets of
    normalised items, dates after `normalise_date`, the other types as JSON values; a value of the wrong type never."""
    if value_problem(spec, prediction) or value_problem(spec, gold):
        return False
    if prediction is None or gold is None:
        return prediction is gold
    if spec.type in ("string", "lines"):
        return normalise(prediction) == normalise(gold)
    if spec.type == "list":
        return item_set(prediction) == item_set(gold)
    if spec.type == "date":
        return normalise_date(prediction) == normalise_date(gold)
    return prediction == gold


def hint(spec: FieldSpec) -> str:
    """What the prompt says of a value beyond its description ('' for a plain string)."""
    if spec.type == "choice":
        kind = f"取值：{'、'.join(spec.choices or ())}"
    else:
        kind = _HINTS.get(spec.type, "")
    return "，".join(filter(None, [kind, "没有的填 null" if spec.optional else ""]))


def json_schema(spec: FieldSpec) -> dict[str, Any]:
    """The field as a JSON Schema property (OpenAI's strict mode: an optional value is its type or null); a lines
    field as the line ranges the student answers."""
    kinds = {"string": {"type": "string"}, "list": {"type": "array", "items": {"type": "string"}},
             "choice": {"type": "string", "enum": list(spec.choices or ())}, "integer": {"type": "integer"},
             "number": {"type": "number"}, "boolean": {"type": "boolean"},
             "date": {"type": "string", "pattern": r"^\d{4}-\d{2}-\d{2}$"},
             "lines": {"type": "array", "items": {"type": "array", "items": {"type": "integer"}}}}
    prop = {**kinds[spec.type], "description": spec.description}
    if spec.optional:
        prop["type"] = [prop["type"], "null"]
        if "enum" in prop:
            prop["enum"] = [*prop["enum"], None]
    return prop
