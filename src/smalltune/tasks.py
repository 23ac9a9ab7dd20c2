"""Task kinds: how a record becomes chat messages, how an answer is parsed, how answers are scored.

One class per kind (extract, classify, chat). Training, inference and evaluation all go through
these methods, so the prompt the model learns is the prompt it is later asked.
"""

from __future__ import annotations

import functools
import json
import re
import statistics
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
    headline: str  # the metric that picks the best checkpoint and leads the report

    def messages(self, record: Record) -> list[dict[str, str]]: ...
    def answer(self, record: Record) -> str: ...
    def parse(self, text: str, record: Record) -> Parsed: ...
    def check(self, record: Record) -> str | None: ...
    def score(self, parsed: list[Parsed], records: list[Record]) -> dict[str, float]: ...
    def details(self, parsed: list[Parsed], records: list[Record]) -> dict[str, Any]: ...
    def record_score(self, parsed: Parsed, record: Record) -> float: ...


@functools.lru_cache(maxsize=65536)
def normalise(text: str) -> str:
    """Light normalisation for comparisons: NFKC (full/half-width) and no whitespace."""
    return re.sub(r"\s+", "", unicodedata.normalize("NFKC", text))


@functools.lru_cache(maxsize=65536)
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


def _lcs_length(a: str, b: str) -> int:
    """Length of the longest common subsequence of two strings (one row of the table at a time)."""
    if len(a) < len(b):
        a, b = b, a
    previous = [0] * (len(b) + 1)
    for char in a:
        current = [0]
        for j, other in enumerate(b, start=1):
            current.append(previous[j - 1] + 1 if char == other else max(previous[j], current[j - 1]))
        previous = current
    return previous[-1]


@functools.lru_cache(maxsize=65536)
def rouge_l(prediction: str, reference: str) -> float:
    """ROUGE-L F1 over characters (no word segmentation, so it suits Chinese), after `normalise`."""
    pred, ref = normalise(prediction), normalise(reference)
    if not pred and not ref:
        return 1.0
    common = _lcs_length(pred, ref)
    if common == 0:
        return 0.0
    precision, recall = common / len(pred), common / len(ref)
    return 2 * precision * recall / (precision + recall)


def length_stats(lengths: list[int]) -> dict[str, float]:
    """Mean, median, 90th percentile, min and max of a list of lengths (all 0 when empty)."""
    if not lengths:
        return dict.fromkeys(("mean", "median", "p90", "min", "max"), 0.0)
    ordered = sorted(lengths)
    return {
        "mean": statistics.fmean(ordered),
        "median": float(statistics.median(ordered)),
        "p90": float(ordered[min(len(ordered) - 1, int(0.9 * len(ordered)))]),
        "min": float(ordered[0]),
        "max": float(ordered[-1]),
    }


def parse_errors(parsed: list[Parsed]) -> dict[str, int]:
    """How often each parse error occurred, most frequent first."""
    return dict(Counter(p.error for p in parsed if not p.ok).most_common())


NO_LABEL = "(no label)"


def _label_counts(preds: list[Any], golds: list[Any], label: str) -> dict[str, float]:
    """Precision, recall, F1 and support (gold count) of one label."""
    tp = sum(p == label and g == label for p, g in zip(preds, golds))
    fp = sum(p == label and g != label for p, g in zip(preds, golds))
    fn = sum(p != label and g == label for p, g in zip(preds, golds))
    return {
        "precision": tp / (tp + fp) if tp + fp else 0.0,
        "recall": tp / (tp + fn) if tp + fn else 0.0,
        "f1": 2 * tp / (2 * tp + fp + fn) if tp else 0.0,
        "support": tp + fn,
    }


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

    headline = "field_exact"

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

    def _predicted(self, result: Parsed, field: str) -> str:
        """The answer's value for a field as text ('' when absent or null)."""
        value = result.value.get(field)
        return "" if value is None else str(value)

    def _hits(self, result: Parsed, record: Record) -> dict[str, bool]:
        """Per field: does the answer's value equal the reference after `normalise`?"""
        gold = self._gold(record)
        return {f: normalise(self._predicted(result, f)) == normalise(gold[f]) for f in self.config.fields}

    def _extractive(self) -> list[str]:
        return [f for f, spec in self.config.fields.items() if spec.extractive]

    def _made_up(self, result: Parsed, record: Record) -> list[str]:
        """Extractive fields whose predicted value (non-empty) does not occur in the input."""
        text = normalise(record.input)
        return [f for f in self._extractive() if (value := normalise(self._predicted(result, f))) and value not in text]

    def score(self, parsed: list[Parsed], records: list[Record]) -> dict[str, float]:
        """JSON validity, schema conformance, per-field exact match and character F1, whole-record exact match,
        and `hallucinated`: the share of non-empty extractive values that do not occur in the input."""
        n = max(len(records), 1)
        fields = list(self.config.fields)
        exact_hits, f1_sums = dict.fromkeys(fields, 0), dict.fromkeys(fields, 0.0)
        whole = valid = schema = given = made_up = 0
        for result, record in zip(parsed, records, strict=True):
            if not result.ok:
                continue
            valid += 1
            schema += set(result.value) == set(fields)
            gold = self._gold(record)
            hits = self._hits(result, record)
            for field in fields:
                exact_hits[field] += hits[field]
                f1_sums[field] += char_f1(self._predicted(result, field), gold[field])
            whole += all(hits.values())
            given += sum(bool(normalise(self._predicted(result, f))) for f in self._extractive())
            made_up += len(self._made_up(result, record))
        metrics = {"json_valid": valid / n, "schema_ok": schema / n, "record_exact": whole / n}
        metrics["field_exact"] = sum(exact_hits.values()) / (n * len(fields))
        metrics["field_f1"] = sum(f1_sums.values()) / (n * len(fields))
        metrics["hallucinated"] = made_up / given if given else 0.0
        metrics.update({f"field_exact.{f}": hits / n for f, hits in exact_hits.items()})
        metrics.update({f"field_f1.{f}": total / n for f, total in f1_sums.items()})
        return metrics

    def details(self, parsed: list[Parsed], records: list[Record]) -> dict[str, Any]:
        """Parse errors by reason and the made-up values (record id, field, value), the first 50."""
        made_up = [
            {"id": record.id, "field": field, "value": self._predicted(result, field)}
            for result, record in zip(parsed, records, strict=True) if result.ok
            for field in self._made_up(result, record)
        ]
        return {"parse_errors": parse_errors(parsed), "hallucinated_values": made_up[:50]}

    def record_score(self, parsed: Parsed, record: Record) -> float:
        """The share of fields answered exactly (0 for an unreadable answer)."""
        if not parsed.ok:
            return 0.0
        hits = self._hits(parsed, record)
        return sum(hits.values()) / len(hits)


class ClassifyTask(_Base):
    """Text and candidate labels in, one label out."""

    headline = "macro_f1"

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
        f1s = [_label_counts(preds, golds, label)["f1"] for label in sorted(set(golds))]
        return {
            "accuracy": sum(p == g for p, g in zip(preds, golds)) / n,
            "macro_f1": sum(f1s) / max(len(f1s), 1),
            "invalid_label": sum(not p.ok for p in parsed) / n,
        }

    def details(self, parsed: list[Parsed], records: list[Record]) -> dict[str, Any]:
        """Per-label precision/recall/F1/support and the confusion matrix (rows gold, columns answer, last column
        `NO_LABEL` for answers that are no label)."""
        golds = [r.output for r in records]
        preds = [p.value for p in parsed]
        labels = list(dict.fromkeys([*self.config.labels, *sorted(set(golds) | {p for p in preds if p is not None})]))
        answered = [NO_LABEL if p is None else p for p in preds]
        columns = [*labels, NO_LABEL]
        counts = Counter(zip(golds, answered))
        return {
            "labels": labels,
            "per_label": {label: _label_counts(preds, golds, label) for label in labels},
            "confusion": {"rows": labels, "columns": columns,
                          "counts": [[counts[(gold, col)] for col in columns] for gold in labels]},
            "parse_errors": parse_errors(parsed),
        }

    def record_score(self, parsed: Parsed, record: Record) -> float:
        """1 for the right label, else 0."""
        return float(parsed.value == record.output)


class ChatTask(_Base):
    """A reply in a persona; scored against the reference reply."""

    headline = "rouge_l"

    def answer(self, record: Record) -> str:
        return str(record.output)

    def check(self, record: Record) -> str | None:
        return None if isinstance(record.output, str) and record.output.strip() else "'output' must be a non-empty reply"

    def parse(self, text: str, record: Record) -> Parsed:
        return Parsed(text.strip())

    def score(self, parsed: list[Parsed], records: list[Record]) -> dict[str, float]:
        """Character F1 and character ROUGE-L against the reference reply, and the mean reply length."""
        n = max(len(records), 1)
        return {
            "char_f1": sum(char_f1(p.value or "", str(r.output)) for p, r in zip(parsed, records)) / n,
            "rouge_l": sum(rouge_l(p.value or "", str(r.output)) for p, r in zip(parsed, records)) / n,
            "reply_chars": sum(len(p.value or "") for p in parsed) / n,
        }

    def details(self, parsed: list[Parsed], records: list[Record]) -> dict[str, Any]:
        """Length statistics (characters) of the replies and of the reference replies."""
        return {
            "reply_chars": length_stats([len(p.value or "") for p in parsed]),
            "reference_chars": length_stats([len(str(r.output)) for r in records]),
        }

    def record_score(self, parsed: Parsed, record: Record) -> float:
        """Character ROUGE-L of the reply against the reference."""
        return rouge_l(parsed.value or "", str(record.output))


def build_task(config: TaskConfig) -> TaskKind:
    """The TaskKind object for the config's kind."""
    return {"extract": ExtractTask, "classify": ClassifyTask, "chat": ChatTask}[config.kind](config)
