"""extract: text in, one JSON object with exactly the declared fields out."""

from __future__ import annotations

import json
from typing import Any

from smalltune.config import TaskConfig
from smalltune.data.records import Record
from smalltune.tasks.base import Parsed, ReportBars, TaskKind, parse_errors
from smalltune.tasks.grammar import extract_grammar
from smalltune.tasks.metrics import char_f1
from smalltune.tasks.text import normalise


class ExtractTask(TaskKind):
    """Text in, one JSON object with exactly the declared fields out (each a string; '' when absent)."""

    headline = "field_exact"
    endpoint = "/extract"
    result_key = "result"
    example = """instruction: 从下面的客户投诉中抽取投诉人的信息。
# system: 你是一个信息抽取助手。  # optional system prompt (the model's default when absent)
fields:                          # extract: field name -> description (extractive: copied verbatim from the text)
  name: 投诉人姓名
  address: 投诉人地址
  email: 投诉人邮箱
  question: 投诉的内容，原文照录（含结尾标点）
"""

    @classmethod
    def config_problem(cls, config: TaskConfig) -> str | None:
        return None if config.fields else "kind 'extract' needs 'fields' (name: description)"

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

    def grammar(self, record: Record, grounded: bool) -> str:
        """The canonical answer object; with `grounded`, extractive values spelled from the record's input only."""
        fields = {name: spec.extractive for name, spec in self.config.fields.items()}
        return extract_grammar(fields, record.input if grounded else None)

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
        except RecursionError:
            return Parsed(None, "invalid JSON: nested too deeply")
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
        """The fields, parse errors by reason and the made-up values (record id, field, value), the first 50."""
        made_up = [
            {"id": record.id, "field": field, "value": self._predicted(result, field)}
            for result, record in zip(parsed, records, strict=True) if result.ok
            for field in self._made_up(result, record)
        ]
        return {"fields": list(self.config.fields), "parse_errors": parse_errors(parsed),
                "hallucinated_values": made_up[:50]}

    def record_score(self, parsed: Parsed, record: Record) -> float:
        """The share of fields answered exactly (0 for an unreadable answer)."""
        if not parsed.ok:
            return 0.0
        hits = self._hits(parsed, record)
        return sum(hits.values()) / len(hits)

    def teacher_messages(self, record: Record) -> list[dict[str, str]]:
        """The student's messages; when the user turn does not name every field, the field list is added."""
        messages = self.messages(record)
        if any(name not in messages[-1]["content"] for name in self.config.fields):
            messages[-1] = {**messages[-1], "content": f"{messages[-1]['content']}\n\n{self.default_instruction(record)}"}
        return messages

    def teacher_schema(self) -> dict:
        """Exactly the task's fields, as strings."""
        properties = {name: {"type": "string", "description": spec.description} for name, spec in self.config.fields.items()}
        schema = {"type": "object", "properties": properties, "required": list(self.config.fields),
                  "additionalProperties": False}
        return {"type": "json_schema", "json_schema": {"name": "fields", "strict": True, "schema": schema}}

    def teacher_answer(self, text: str, record: Record) -> Parsed:
        """Checked as training data, then grounded: each extractive value must occur verbatim in the text (not
        merely equal after normalising: grounded constrained decoding can only copy exact text)."""
        parsed = super().teacher_answer(text, record)
        if not parsed.ok:
            return parsed
        value = {name: parsed.value[name] for name in self.config.fields}
        ungrounded = [name for name in self._extractive() if value[name] and value[name] not in record.input]
        if ungrounded:
            listed = ", ".join(f"'{name}' = {value[name]!r}" for name in ungrounded)
            return Parsed(None, f"{listed} not found in the text; copy values verbatim from the text or leave them empty")
        return Parsed(value)

    @classmethod
    def report_bars(cls, summary: dict[str, Any]) -> ReportBars:
        fields = next(iter(summary["systems"].values()))["details"]["fields"]
        return ReportBars("exact match per field", fields, {
            name: [s["metrics"][f"field_exact.{f}"] for f in fields] for name, s in summary["systems"].items()})
