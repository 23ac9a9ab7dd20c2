"""The task kind: everything that differs between extract, classify and chat, behind one class.

Training, inference, evaluation, labelling, serving and the report all ask the `TaskKind` and never
branch on the kind themselves: the prompt the model learns is the prompt it is later asked, the grammar
spells the answer training wrote, and the teacher is checked the way training data is. A new kind is a
subclass in a module of its own plus one line in `smalltune.registry.KINDS`.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any, ClassVar, Literal

from smalltune.config import TaskConfig
from smalltune.data.records import Record
from smalltune.tasks.lines import numbered


@dataclass(frozen=True)
class Parsed:
    """A model answer after parsing: the value, or the reason it could not be read; and, when the answer was
    chosen by scoring its candidates, each candidate's probability."""

    value: Any
    error: str | None = None
    probabilities: dict[str, float] | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


def parse_errors(parsed: list[Parsed]) -> dict[str, int]:
    """How often each parse error occurred, most frequent first."""
    return dict(Counter(p.error for p in parsed if not p.ok).most_common())


@dataclass(frozen=True)
class ReportTable:
    """A table of the report, as data: `numeric` cells right-aligned, `text` cells wrapped, `heat` shaded by count."""

    head: list[str]
    rows: list[list[Any]]
    style: Literal["numeric", "text", "heat"] = "numeric"
    caption: str = ""


@dataclass(frozen=True)
class ReportSection:
    """A kind-specific section of the report: a title, a sentence on how to read it, its tables."""

    title: str
    note: str
    tables: list[ReportTable]
    anchor: str  # the HTML id prefix of its tables


@dataclass(frozen=True)
class ReportBars:
    """Grouped bars of the report: one group per field / label / score, one bar per system."""

    title: str
    groups: list[str]
    series: dict[str, list[float]]


def user_text(instruction: str, text: str) -> str:
    """The user turn: the instruction, a blank line, then the record's text."""
    return f"{instruction}\n\n{text}" if instruction else text


class TaskKind:
    """Base class of the task kinds; one instance serves one task file."""

    headline: str  # the metric that picks the best checkpoint and leads the report (a property where it depends
    # on the task file: extract's)
    endpoint: ClassVar[str | None] = None  # serve's own route for the kind (under /v1), e.g. "/extract"
    result_key: ClassVar[str] = "result"  # the key of the parsed answer in that route's response
    takes_candidates: ClassVar[bool] = False  # whether a request may bring its own label choices
    example: ClassVar[str] = ""  # the kind's keys in the task file `smalltune init` writes (commented YAML)

    def __init__(self, config: TaskConfig):
        self.config = config

    @classmethod
    def config_problem(cls, config: TaskConfig) -> str | None:
        """What the task file lacks for this kind (the message names the key), or None."""
        return None

    # ---- prompts -------------------------------------------------------------------------------

    def default_instruction(self, record: Record) -> str:
        """The instruction a record without its own gets."""
        return self.config.instruction

    def _instruction(self, record: Record) -> str:
        return record.instruction if record.instruction is not None else self.default_instruction(record)

    @property
    def numbers_lines(self) -> bool:
        """Whether the prompt shows the input as numbered lines, for answers that name lines (`tasks.lines`)."""
        return False

    def shown_input(self, record: Record) -> str:
        """The record's input as the user turn shows it: numbered lines (each cut after model.line_chars characters)
        when `numbers_lines`, else as it is."""
        return numbered(record.input, self.config.model.line_chars) if self.numbers_lines else record.input

    def messages(self, record: Record) -> list[dict[str, str]]:
        """System prompt (record's or task's), earlier turns, then the user turn (`shown_input`)."""
        system = record.system if record.system is not None else self.config.system
        head = [{"role": "system", "content": system}] if system else []
        user = {"role": "user", "content": user_text(self._instruction(record), self.shown_input(record))}
        return [*head, *record.history, user]

    def answer(self, record: Record) -> str:
        """The text the model learns to answer for this record (its reference answer)."""
        return str(record.output)

    def grammar(self, record: Record, grounded: bool) -> str | None:
        """The EBNF the record's answer must follow (`tasks.grammar`); None when the answer is free text."""
        return None

    @property
    def scores_choices(self) -> bool:
        """Whether the engine answers by scoring each of `choices(record)` after the prompt (the likeliest is the
        answer) instead of generating the answer."""
        return False

    def choices(self, record: Record) -> list[str]:
        """The answers the engine scores for this record, when `scores_choices`."""
        raise NotImplementedError

    # ---- answers -------------------------------------------------------------------------------

    def check(self, record: Record) -> str | None:
        """Why the record's output cannot be a training answer (a message naming 'output'), or None."""
        raise NotImplementedError

    def parse(self, text: str, record: Record) -> Parsed:
        """The model's answer text as a value, or the reason it cannot be read."""
        raise NotImplementedError

    def parse_all(self, texts: Sequence[str], records: Sequence[Record],
                  probabilities: Sequence[dict[str, float]] | None = None) -> list[Parsed]:
        """Each answer parsed, carrying its candidates' probabilities when the answers were scored."""
        parsed = [self.parse(text, record) for text, record in zip(texts, records, strict=True)]
        if probabilities is None:
            return parsed
        return [replace(p, probabilities=s) for p, s in zip(parsed, probabilities, strict=True)]

    def score(self, parsed: list[Parsed], records: list[Record]) -> dict[str, float]:
        """The kind's metrics over many answers (the headline among them)."""
        raise NotImplementedError

    def record_facts(self, parsed: Parsed, record: Record) -> Any:
        """What `aggregate` needs of one answer: a kind whose metrics are counts over answers does its per-answer
        work here, once however often a bootstrap resamples the answer (default: the answer and its record)."""
        return parsed, record

    def aggregate(self, facts: list[Any]) -> dict[str, float]:
        """The metrics of the answers whose `record_facts` these are: `score` over them unless a kind counts."""
        return self.score([parsed for parsed, _ in facts], [record for _, record in facts])

    def details(self, parsed: list[Parsed], records: list[Record]) -> dict[str, Any]:
        """What the report shows beyond the metrics (per label, per field, lengths, parse errors)."""
        raise NotImplementedError

    def record_score(self, parsed: Parsed, record: Record) -> float:
        """One record's score in 0..1 (the report's worst errors are the lowest)."""
        raise NotImplementedError

    # ---- labelling and serving -----------------------------------------------------------------

    def teacher_messages(self, record: Record) -> list[dict[str, str]]:
        """What `smalltune label` asks the teacher: the student's own prompt."""
        return self.messages(record)

    def teacher_schema(self) -> dict | None:
        """The OpenAI `response_format` JSON schema for the teacher's answer; None when the answer is text."""
        return None

    def teacher_answer(self, text: str, record: Record) -> Parsed:
        """The teacher's answer as a training output, or why it cannot be one (parsed, then checked as data is)."""
        parsed = self.parse(text, record)
        if not parsed.ok:
            return parsed
        problem = self.check(replace(record, output=parsed.value))
        return Parsed(None, problem.replace("'output'", "the answer")) if problem else parsed

    def request_problem(self, record: Record) -> str | None:
        """Why `serve` cannot answer a request made into this record (answered 400), or None."""
        return None

    # ---- the report (static: it is rebuilt from metrics.json alone) -------------------------------

    @classmethod
    def report_bars(cls, summary: dict[str, Any]) -> ReportBars:
        """The bars drawn per system, from metrics.json."""
        raise NotImplementedError

    @classmethod
    def report_sections(cls, summary: dict[str, Any], predictions: list[dict[str, Any]]) -> list[ReportSection]:
        """The kind's own report sections (confusion matrices, reply lengths, ...), from metrics.json and
        predictions.jsonl."""
        return []

    @classmethod
    def report_calibration(cls, summary: dict[str, Any]) -> dict[str, list[dict[str, float]]]:
        """The reliability diagram's points, per system whose answers carry probabilities: each confidence bin's
        `low`, `high`, `count`, mean `confidence` and `accuracy` (`tasks.metrics.calibration`); {} for none."""
        return {}
