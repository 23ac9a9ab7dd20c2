"""Task kinds: how a record becomes chat messages, how an answer is parsed, how answers are scored.

One class per kind (extract, classify, chat). Training, inference and evaluation all go through
these methods, so the prompt the model learns is the prompt it is later asked.
"""

from __future__ import annotations

import json
import re
import unicodedata
from collections import Counter
from dataclasses import dataclass
from typing import Any, Protocol

from smalltune.config import TaskConfig
from smalltune.data import Record


@dataclass(frozen=True)
class Parsed:
    """A model answer after parsing: the value, or the reason it could not be read."""

    value: Any
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


class TaskKind(Protocol):
    config: TaskConfig

    def messages(self, record: Record) -> list[dict[str, str]]: ...
    def answer(self, record: Record) -> str: ...
    def parse(self, text: str, record: Record) -> Parsed: ...
    def check(self, record: Record) -> str | None: ...
    def score(self, parsed: list[Parsed], records: list[Record]) -> dict[str, float]: ...


def normalise(text: str) -> str:
    """Light normalisation for comparisons: NFKC (full/half-width) and no whitespace."""
    return re.sub(r"\s+", "", unicodedata.normalize("NFKC", text))


def char_f1(prediction: str, reference: str) -> float:
    """Character-level F1 (bag of characters), the usual measure for Chinese spans."""
    pred, ref = Counter(normalise(prediction)), Counter(normalise(reference))
    if not pred and not ref:
        return 1.0
    common = sum((pred & ref).values())
    if common == 0:
        return 0.0
    precision, recall = common / sum(pred.values()), common / sum(ref.values())
    return 2 * precision * recall / (precision + recall)


def _user_text(instruction: str, text: str) -> str:
    return f"{instruction}\n\n{text}" if instruction else text


class _Base:
    def __init__(self, config: TaskConfig):
        self.config = config

    def _instruction(self, record: Record) -> str:
        return record.instruction if record.instruction is not None else self.default_instruction(record)

    def default_instruction(self, record: Record) -> str:
        return self.config.instruction

    def messages(self, record: Record) -> list[dict[str, str]]:
        """System prompt (record's or task's), earlier turns, then the user turn."""
        system = record.system if record.system is not None else self.config.system
        head = [{"role": "system", "content": system}] if system else []
        user = {"role": "user", "content": _user_text(self._instruction(record), record.input)}
        return [*head, *record.history, user]


class ExtractTask(_Base):
    """Text in, one JSON object with exactly the declared fields out."""

    def default_instruction(self, record: Record) -> str:
        lines = [f"- {name}：{spec.description}" if spec.description else f"- {name}" for name, spec in self.config.fields.items()]
        head = self.config.instruction or "从下面的文本中抽取信息。"
        return f"{head}\n只输出一个 JSON 对象，字段如下（没有的填空字符串）：\n" + "\n".join(lines)

    def _gold(self, record: Record) -> dict[str, str]:
        output = record.output
        return json.loads(output) if isinstance(output, str) else dict(output or {})

    def answer(self, record: Record) -> str:
        """The canonical serialisation: declared field order, UTF-8, no code fence."""
        gold = self._gold(record)
        return json.dumps({name: gold[name] for name in self.config.fields}, ensure_ascii=False)

    def check(self, record: Record) -> str | None:
        try:
            gold = self._gold(record)
        except json.JSONDecodeError as exc:
            return f"'output' is not a JSON object: {exc.msg}"
        if not isinstance(gold, dict):
            return "'output' must be a JSON object with the task's fields"
        missing = [f for f in self.config.fields if f not in gold]
        extra = [f for f in gold if f not in self.config.fields]
        if missing or extra:
            return f"'output' fields differ from the task's: missing {missing}, unexpected {extra}"
        bad = [f for f, v in gold.items() if not isinstance(v, str)]
        return f"'output' field(s) {bad} must be strings" if bad else None

    def parse(self, text: str, record: Record) -> Parsed:
        """Read the first JSON object in the answer (code fences and chatter around it are tolerated)."""
        start = text.find("{")
        if start < 0:
            return Parsed(None, "no JSON object in the answer")
        try:
            value, _ = json.JSONDecoder().raw_decode(text[start:])
        except json.JSONDecodeError as exc:
            return Parsed(None, f"invalid JSON: {exc.msg}")
        if not isinstance(value, dict):
            return Parsed(None, "the JSON is not an object")
        return Parsed(value)

    def score(self, parsed: list[Parsed], records: list[Record]) -> dict[str, float]:
        """JSON validity, schema conformance, per-field exact match and whole-record exact match."""
        n = max(len(records), 1)
        fields = list(self.config.fields)
        field_hits = dict.fromkeys(fields, 0)
        exact = valid = schema = 0
        for result, record in zip(parsed, records, strict=True):
            if not result.ok:
                continue
            valid += 1
            schema += set(result.value) == set(fields)
            gold = self._gold(record)
            hits = [normalise(str(result.value.get(f, ""))) == normalise(gold[f]) for f in fields]
            for field, hit in zip(fields, hits):
                field_hits[field] += hit
            exact += all(hits)
        metrics = {"json_valid": valid / n, "schema_ok": schema / n, "record_exact": exact / n}
        metrics["field_exact"] = sum(field_hits.values()) / (n * len(fields))
        metrics.update({f"field_exact.{f}": hits / n for f, hits in field_hits.items()})
        return metrics


class ClassifyTask(_Base):
    """Text and candidate labels in, one label out."""

    def candidates(self, record: Record) -> list[str]:
        return list(record.candidates) or self.config.labels

    def default_instruction(self, record: Record) -> str:
        head = self.config.instruction or "判断下面文本的类别。"
        return f"{head}\n候选类别：{'，'.join(self.candidates(record))}\n只输出一个类别名称。"

    def answer(self, record: Record) -> str:
        return str(record.output)

    def check(self, record: Record) -> str | None:
        if not isinstance(record.output, str):
            return "'output' must be one label (text)"
        choices = self.candidates(record)
        return None if record.output in choices else f"'output' {record.output!r} is not one of the labels {choices}"

    def parse(self, text: str, record: Record) -> Parsed:
        """The label itself, or the one label the answer mentions."""
        choices = self.candidates(record)
        answer = text.strip().strip("。.\"'“”")
        if answer in choices:
            return Parsed(answer)
        mentioned = [c for c in choices if c in answer]
        if len(mentioned) == 1:
            return Parsed(mentioned[0])
        return Parsed(None, f"not one of the labels: {answer[:40]!r}")

    def score(self, parsed: list[Parsed], records: list[Record]) -> dict[str, float]:
        """Accuracy, macro-F1 over the gold labels, and the share of answers that are no label."""
        n = max(len(records), 1)
        golds = [r.output for r in records]
        preds = [p.value for p in parsed]
        f1s = []
        for label in sorted(set(golds)):
            tp = sum(p == label and g == label for p, g in zip(preds, golds))
            fp = sum(p == label and g != label for p, g in zip(preds, golds))
            fn = sum(p != label and g == label for p, g in zip(preds, golds))
            f1s.append(2 * tp / (2 * tp + fp + fn) if tp else 0.0)
        return {
            "accuracy": sum(p == g for p, g in zip(preds, golds)) / n,
            "macro_f1": sum(f1s) / max(len(f1s), 1),
            "invalid_label": sum(not p.ok for p in parsed) / n,
        }


class ChatTask(_Base):
    """A reply in a persona; scored against the reference reply."""

    def answer(self, record: Record) -> str:
        return str(record.output)

    def check(self, record: Record) -> str | None:
        return None if isinstance(record.output, str) and record.output.strip() else "'output' must be a non-empty reply"

    def parse(self, text: str, record: Record) -> Parsed:
        return Parsed(text.strip())

    def score(self, parsed: list[Parsed], records: list[Record]) -> dict[str, float]:
        n = max(len(records), 1)
        return {
            "char_f1": sum(char_f1(p.value or "", str(r.output)) for p, r in zip(parsed, records)) / n,
            "reply_chars": sum(len(p.value or "") for p in parsed) / n,
        }


def build_task(config: TaskConfig) -> TaskKind:
    """The TaskKind object for the config's kind."""
    return {"extract": ExtractTask, "classify": ClassifyTask, "chat": ChatTask}[config.kind](config)
