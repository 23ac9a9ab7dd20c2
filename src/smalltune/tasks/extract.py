"""extract: text in, one JSON object with exactly the declared fields out, each value of its field's type."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from smalltune.config import FieldSpec, TaskConfig
from smalltune.data.records import Record
from smalltune.tasks import fields as typed
from smalltune.tasks.base import Parsed, ReportBars, TaskKind, parse_errors
from smalltune.tasks.grammar import extract_grammar
from smalltune.tasks.lines import Line, input_lines, line_ranges, ranges_problem, ranges_text, seen_text
from smalltune.tasks.metrics import char_f1, label_counts, set_scores
from smalltune.tasks.text import normalise


@dataclass(frozen=True)
class AnswerFacts:
    """What `ExtractTask.score` counts of one answer, computed once however often a bootstrap resamples it: readable,
    exactly the declared fields, per field exact or not, extractive values given and made up, character F1 per
    string field, (found, wrong, missed) items per list field, (answered null, answered a value) per optional field
    whose reference is null, (answer, reference) per choice field."""

    readable: bool
    schema_ok: bool
    hits: dict[str, bool]
    copied: int
    made_up: int
    f1: dict[str, float]
    items: dict[str, tuple[int, int, int]]
    nulls: dict[str, tuple[bool, bool]]
    choices: dict[str, tuple[Any, Any]]


class ExtractTask(TaskKind):
    """Text in, one JSON object with exactly the declared fields out, each of its type (`tasks.fields`): a string
    ('' when absent), a list of strings ([] when none), one of the choices, a number, a date, a boolean, whole lines
    of the input (answered as line ranges of the numbered input, read back as their text: `tasks.lines`); an
    optional field is null when absent."""

    endpoint = "/extract"
    result_key = "result"
    example = """instruction: 从下面的客户投诉中抽取投诉人的信息。
# system: 你是一个信息抽取助手。  # optional system prompt (the model's default when absent)
fields:                          # extract: field name -> description (extractive: copied verbatim from the text)
  name: 投诉人姓名
  address: 投诉人地址
  email: 投诉人邮箱
  question: 投诉的内容，原文照录（含结尾标点）
  # typed fields: {type: string | list | choice | integer | number | date | boolean | lines, optional: true for null}
  # companies: {description: 提到的公司, type: list}
  # content: {description: 正文, type: lines}   # long text: answered as line numbers of the input, returned as text
  # priority: {type: choice, choices: [低, 中, 高]}
"""

    @classmethod
    def config_problem(cls, config: TaskConfig) -> str | None:
        return None if config.fields else "kind 'extract' needs 'fields' (name: description) or 'schema' (a JSON Schema)"

    @property
    def headline(self) -> str:
        """`list_f1` (items found, micro-averaged) when every field is a list, else `field_exact`."""
        return "list_f1" if all(spec.type == "list" for spec in self._specs.values()) else "field_exact"

    @property
    def _specs(self) -> dict[str, FieldSpec]:
        return self.config.fields

    @property
    def numbers_lines(self) -> bool:
        """Whether a field is answered by line reference (type: lines)."""
        return any(spec.type == "lines" for spec in self._specs.values())

    def default_instruction(self, record: Record) -> str:
        """The task's instruction (or a generic one), then one line per field: its name, description and what a
        value of its type looks like (`tasks.fields.hint`)."""
        lines = [_field_line(name, spec) for name, spec in self._specs.items()]
        head = self.config.instruction or "从下面的文本中抽取信息。"
        blank = "（没有的填空字符串）" if any(s.type == "string" and not s.optional for s in self._specs.values()) else ""
        return f"{head}\n只输出一个 JSON 对象，字段如下{blank}：\n" + "\n".join(lines)

    def _gold(self, record: Record) -> dict[str, Any]:
        output = record.output
        return json.loads(output) if isinstance(output, str) else dict(output or {})

    def answer(self, record: Record) -> str:
        """The canonical serialisation: declared field order, UTF-8, dates as YYYY-MM-DD, a lines field's text as
        ranges of the input's lines (`tasks.lines.line_ranges`), no code fence."""
        gold, lines = self._gold(record), input_lines(record.input) if self.numbers_lines else []
        return json.dumps({name: line_ranges(gold[name], lines) if spec.type == "lines"
                           else typed.canonical(spec, gold[name]) for name, spec in self._specs.items()},
                          ensure_ascii=False)

    def grammar(self, record: Record, grounded: bool) -> str:
        """The canonical answer object; with `grounded`, extractive values (and list items) spelled from the
        record's input only (from what the prompt shows of its lines, when it numbers them); lines fields name
        lines of the input."""
        text = seen_text(record.input, self.config.model.line_chars) if self.numbers_lines else record.input
        count = len(input_lines(record.input)) if self.numbers_lines else 0
        return extract_grammar(self._specs, text if grounded else None, count)

    def check(self, record: Record) -> str | None:
        """Why the output is no training answer: not an object, other fields than the task's, a value that is
        not of its field's type or not canonical (`tasks.fields.data_problem`), or a lines field's text that is not
        whole lines of the input (`tasks.lines.line_ranges`): "field 'x': expected ..."."""
        try:
            gold = self._gold(record)
        except json.JSONDecodeError as exc:
            return f"'output' is not a JSON object: {exc.msg}"
        if not isinstance(gold, dict):
            return "'output' must be a JSON object with the task's fields"
        missing = [f for f in self._specs if f not in gold]
        extra = [f for f in gold if f not in self._specs]
        if missing or extra:
            return f"'output' fields differ from the task's: missing {missing}, unexpected {extra}"
        lines = input_lines(record.input) if self.numbers_lines else []
        return (self._first_problem(gold, typed.data_problem)
                or self._first_problem(gold, lambda spec, value: _not_lines(spec, value, lines)))

    def _first_problem(self, value: dict[str, Any], problem_of: Callable[[FieldSpec, Any], str | None]) -> str | None:
        """The first declared field whose value `problem_of(spec, value)` finds fault with, as "field 'x': ..."."""
        for name, spec in self._specs.items():
            if name in value and (problem := problem_of(spec, value[name])):
                return f"field '{name}': {problem}"
        return None

    def parse(self, text: str, record: Record) -> Parsed:
        """Read the first JSON object in the answer (code fences and chatter around it are tolerated), read a
        lines field's ranges as the text of those lines of the record's input, tidy its values
        (`tasks.fields.tidied`: a list's repeated items dropped, '' of an optional field as null, dates as
        YYYY-MM-DD), then check each declared field's type; fields left out or added are scored, not refused."""
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
        if self.numbers_lines:
            lines = input_lines(record.input)
            problem = self._first_problem(value, lambda spec, v: _not_ranges(spec, v, lines))
            if problem:
                return Parsed(None, problem)
            value = {k: ranges_text(v, lines) if k in self._specs and self._specs[k].type == "lines" else v
                     for k, v in value.items()}
        value = {k: typed.tidied(self._specs[k], v) if k in self._specs else v for k, v in value.items()}
        problem = self._first_problem(value, typed.value_problem)
        return Parsed(None, problem) if problem else Parsed(value)

    def _predicted(self, result: Parsed, field: str) -> Any:
        """The answer's value for a field (`tasks.fields.absent` when left out)."""
        return result.value.get(field, typed.absent(self._specs[field]))

    def _hits(self, result: Parsed, gold: dict[str, Any]) -> dict[str, bool]:
        """Per field: does the answer's value equal the reference (`tasks.fields.same`)?"""
        return {f: typed.same(spec, self._predicted(result, f), typed.canonical(spec, gold[f]))
                for f, spec in self._specs.items()}

    def _made_up(self, result: Parsed, record: Record) -> list[tuple[str, str]]:
        """(field, text) of each extractive value or list item (non-empty) that does not occur in the input."""
        text = normalise(record.input)
        return [(f, item) for f, item in self._copied(result) if normalise(item) not in text]

    def _copied(self, result: Parsed) -> list[tuple[str, str]]:
        """(field, text) of each non-empty extractive value and list item of the answer."""
        return [(f, item) for f, spec in self._specs.items() if spec.extractive
                for item in typed.items(spec, self._predicted(result, f))]

    def score(self, parsed: list[Parsed], records: list[Record]) -> dict[str, float]:
        """`json_valid` (a JSON object of the declared types), `schema_ok` (exactly the declared fields),
        `record_exact`, `field_exact` and `field_exact.<f>` (`tasks.fields.same`), character F1 of string and lines fields
        (`field_f1`, `field_f1.<f>`), `hallucinated` (the share of non-empty extractive values and list items not
        in the input); list fields: `list_precision`, `list_recall` and `list_f1` of their items, micro-averaged
        over all list fields and per field (`list_f1.<f>` ...); optional fields: `null_correct` (reference null,
        answered null) and `null_invented` (reference null, answered a value), overall and per field; choice
        fields: `macro_f1.<f>` (their accuracy is `field_exact.<f>`)."""
        return self.aggregate([self.record_facts(result, record) for result, record in zip(parsed, records, strict=True)])

    def record_facts(self, parsed: Parsed, record: Record) -> AnswerFacts:
        """One answer's counts behind `score`; an unreadable answer holds each field's absent value."""
        gold, result = self._gold(record), parsed if parsed.ok else None
        values = {f: self._predicted(result, f) if result else typed.absent(spec) for f, spec in self._specs.items()}
        lists = {f: (typed.item_set(values[f]), typed.item_set(gold[f]))
                 for f, spec in self._specs.items() if spec.type == "list"}
        return AnswerFacts(
            readable=result is not None,
            schema_ok=result is not None and set(result.value) == set(self._specs),
            hits=self._hits(result, gold) if result else {},
            copied=len(self._copied(result)) if result else 0,
            made_up=len(self._made_up(result, record)) if result else 0,
            f1={f: char_f1(values[f] or "", gold[f] or "") if result else 0.0
                for f, spec in self._specs.items() if spec.type in ("string", "lines")},
            items={f: (len(found & wanted), len(found - wanted), len(wanted - found)) for f, (found, wanted) in lists.items()},
            nulls={f: (result is not None and values[f] is None, values[f] is not None)
                   for f, spec in self._specs.items() if spec.optional and gold[f] is None},
            choices={f: (values[f], gold[f]) for f, spec in self._specs.items() if spec.type == "choice"},
        )

    def aggregate(self, facts: list[AnswerFacts]) -> dict[str, float]:
        """`score`'s metrics from the answers' `record_facts`."""
        n, fields = max(len(facts), 1), list(self._specs)
        hits = [f.hits for f in facts if f.readable]
        given = sum(f.copied for f in facts)
        f1 = {field: sum(f.f1[field] for f in facts) / n
              for field, spec in self._specs.items() if spec.type in ("string", "lines")}
        metrics = {"json_valid": len(hits) / n,
                   "schema_ok": sum(f.schema_ok for f in facts) / n,
                   "record_exact": sum(all(h.values()) for h in hits) / n,
                   "field_exact": sum(sum(h.values()) for h in hits) / (n * len(fields)),
                   **({"field_f1": sum(f1.values()) / len(f1)} if f1 else {}),
                   "hallucinated": sum(f.made_up for f in facts) / given if given else 0.0}
        metrics.update({f"field_exact.{f}": sum(h[f] for h in hits) / n for f in fields})
        metrics.update({f"field_f1.{f}": value for f, value in f1.items()})
        for scores in (self._list_scores, self._null_scores, self._choice_scores):
            metrics.update(scores(facts))
        return metrics

    def _list_scores(self, facts: list[AnswerFacts]) -> dict[str, float]:
        """Set precision, recall and F1 of the list fields' items (after `normalise`), per field and micro-averaged
        over all of them; an unreadable answer finds no items."""
        lists = [f for f, spec in self._specs.items() if spec.type == "list"]
        totals, metrics = Counter(), {}
        for field in lists:
            counts = Counter()
            for f in facts:
                tp, fp, fn = f.items[field]
                counts.update(tp=tp, fp=fp, fn=fn)
            totals.update(counts)
            metrics.update({f"{name}.{field}": value for name, value in set_scores(**counts).items()})
        return {**set_scores(**totals), **metrics} if lists else {}

    def _null_scores(self, facts: list[AnswerFacts]) -> dict[str, float]:
        """Of the records whose reference is null in an optional field: the share answered null (`null_correct`)
        and the share answered a value (`null_invented`); per field and over all optional fields (1 and 0 when no
        reference is null). An unreadable answer is neither."""
        optional = [f for f, spec in self._specs.items() if spec.optional]
        totals, metrics = Counter(), {}
        for field in optional:
            counts = Counter()
            for f in facts:
                if field in f.nulls:
                    correct, invented = f.nulls[field]
                    counts.update(nulls=1, correct=correct, invented=invented)
            totals.update(counts)
            metrics.update(_null_shares(counts, f".{field}"))
        return {**_null_shares(totals, ""), **metrics} if optional else {}

    def _choice_scores(self, facts: list[AnswerFacts]) -> dict[str, float]:
        """Macro-F1 over its choices per choice field (its accuracy is `field_exact.<field>`)."""
        metrics = {}
        for field, spec in self._specs.items():
            if spec.type == "choice":
                values, wanted = [f.choices[field][0] for f in facts], [f.choices[field][1] for f in facts]
                f1s = [label_counts(values, wanted, choice)["f1"] for choice in spec.choices or ()]
                metrics[f"macro_f1.{field}"] = sum(f1s) / len(f1s)
        return metrics

    def details(self, parsed: list[Parsed], records: list[Record]) -> dict[str, Any]:
        """The fields, parse errors by reason and the made-up values (record id, field, value), the first 50."""
        made_up = [
            {"id": record.id, "field": field, "value": value}
            for result, record in zip(parsed, records, strict=True) if result.ok
            for field, value in self._made_up(result, record)
        ]
        return {"fields": list(self._specs), "parse_errors": parse_errors(parsed), "hallucinated_values": made_up[:50]}

    def record_score(self, parsed: Parsed, record: Record) -> float:
        """The share of fields answered exactly (0 for an unreadable answer)."""
        if not parsed.ok:
            return 0.0
        hits = self._hits(parsed, self._gold(record))
        return sum(hits.values()) / len(hits)

    def teacher_messages(self, record: Record) -> list[dict[str, str]]:
        """The student's messages; when the user turn does not name every field, the field list is added."""
        messages = self.messages(record)
        if any(name not in messages[-1]["content"] for name in self._specs):
            messages[-1] = {**messages[-1], "content": f"{messages[-1]['content']}\n\n{self.default_instruction(record)}"}
        return messages

    def teacher_schema(self) -> dict:
        """Exactly the task's fields, each of its type (`tasks.fields.json_schema`)."""
        properties = {name: typed.json_schema(spec) for name, spec in self._specs.items()}
        schema = {"type": "object", "properties": properties, "required": list(self._specs),
                  "additionalProperties": False}
        return {"type": "json_schema", "json_schema": {"name": "fields", "strict": True, "schema": schema}}

    def teacher_answer(self, text: str, record: Record) -> Parsed:
        """Parsed, checked as training data, then grounded: each extractive value and list item must occur verbatim
        in the text (not merely equal after normalising: grounded constrained decoding can only copy exact text)."""
        parsed = super().teacher_answer(text, record)
        if not parsed.ok:
            return parsed
        value = {name: parsed.value[name] for name in self._specs}
        ungrounded = [(name, item) for name, item in self._copied(parsed) if item not in record.input]
        if ungrounded:
            listed = ", ".join(f"'{name}' = {item!r}" for name, item in ungrounded)
            return Parsed(None, f"{listed} not found in the text; copy values verbatim from the text or leave them empty")
        return Parsed(value)

    @classmethod
    def report_bars(cls, summary: dict[str, Any]) -> ReportBars:
        fields = next(iter(summary["systems"].values()))["details"]["fields"]
        return ReportBars("exact match per field", fields, {
            name: [s["metrics"][f"field_exact.{f}"] for f in fields] for name, s in summary["systems"].items()})


def _null_shares(counts: Counter, suffix: str) -> dict[str, float]:
    """`null_correct` and `null_invented` (with `suffix`) from the counts of null references, null answers to them
    and values answered to them."""
    nulls = counts["nulls"]
    return {f"null_correct{suffix}": counts["correct"] / nulls if nulls else 1.0,
            f"null_invented{suffix}": counts["invented"] / nulls if nulls else 0.0}


def _not_lines(spec: FieldSpec, value: Any, lines: list[Line]) -> str | None:
    """Why a lines field's text is not whole lines of the input (`tasks.lines.line_ranges`); None for other fields."""
    if spec.type != "lines":
        return None
    try:
        line_ranges(value, lines)
    except ValueError as exc:
        return str(exc)
    return None


def _not_ranges(spec: FieldSpec, value: Any, lines: list[Line]) -> str | None:
    """Why a lines field's answer is not ranges of the input's lines (`tasks.lines.ranges_problem`); None for other
    fields."""
    return ranges_problem(value, len(lines)) if spec.type == "lines" else None


def _field_line(name: str, spec: FieldSpec) -> str:
    """A field as the prompt lists it: '- name：description，hint' ('- name' when it has neither)."""
    about = "，".join(filter(None, [spec.description, typed.hint(spec)]))
    return f"- {name}：{about}" if about else f"- {name}"
