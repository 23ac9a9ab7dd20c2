"""classify: text and candidate labels in, one label out; by default chosen by scoring each candidate
(`infer.classify: score`), so every answer carries each candidate's probability and the metrics include the
expected calibration error."""

from __future__ import annotations

from collections import Counter
from typing import Any

from smalltune.config import TaskConfig
from smalltune.data.records import Record
from smalltune.tasks.base import Parsed, ReportBars, ReportSection, ReportTable, TaskKind, parse_errors
from smalltune.tasks.grammar import choice_grammar
from smalltune.tasks.metrics import calibration, label_counts

NO_LABEL = "(no label)"


class ClassifyTask(TaskKind):
    """Text and candidate labels in, one label out."""

    headline = "macro_f1"
    endpoint = "/classify"
    result_key = "label"
    takes_candidates = True
    example = """instruction: 判断新闻标题的类别。
# system: 你是一个新闻编辑。      # optional system prompt (the model's default when absent)
labels: [体育, 财经, 科技, 娱乐]        # classify: the candidate labels
"""

    @classmethod
    def config_problem(cls, config: TaskConfig) -> str | None:
        if config.labels or "candidates" in config.data.columns:
            return None
        return "kind 'classify' needs 'labels' or a 'candidates' column in data.columns"

    def candidates(self, record: Record) -> list[str]:
        """The record's own label choices, else the task's labels."""
        return list(record.candidates) or self.config.labels

    def default_instruction(self, record: Record) -> str:
        head = self.config.instruction or "判断下面文本的类别。"
        return f"{head}\n候选类别：{'，'.join(self.candidates(record))}\n只输出一个类别名称。"

    def grammar(self, record: Record, grounded: bool) -> str:
        """Exactly one of the record's candidates."""
        return choice_grammar(self.candidates(record))

    @property
    def scores_choices(self) -> bool:
        """With infer.classify: score (the default) the engine scores the candidates instead of generating."""
        return self.config.infer.classify == "score"

    def choices(self, record: Record) -> list[str]:
        """The record's candidates, each once."""
        return list(dict.fromkeys(self.candidates(record)))

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
        """Accuracy, macro-F1 over the gold labels, the share of answers that are no label, and, when the answers
        carry probabilities, the expected calibration error (`ece`, 10 bins; 0 is perfectly calibrated)."""
        n = max(len(records), 1)
        golds = [r.output for r in records]
        preds = [p.value for p in parsed]
        f1s = [label_counts(preds, golds, label)["f1"] for label in sorted(set(golds))]
        metrics = {
            "accuracy": sum(p == g for p, g in zip(preds, golds)) / n,
            "macro_f1": sum(f1s) / max(len(f1s), 1),
            "invalid_label": sum(not p.ok for p in parsed) / n,
        }
        reliability = _calibration(parsed, records)
        if reliability is not None:
            metrics["ece"] = reliability["ece"]
        return metrics

    def details(self, parsed: list[Parsed], records: list[Record]) -> dict[str, Any]:
        """Per-label precision/recall/F1/support and the confusion matrix (rows gold, columns answer, last column
        `NO_LABEL` for answers that are no label)."""
        golds = [r.output for r in records]
        preds = [p.value for p in parsed]
        labels = list(dict.fromkeys([*self.config.labels, *sorted(set(golds) | {p for p in preds if p is not None})]))
        answered = [NO_LABEL if p is None else p for p in preds]
        columns = [*labels, NO_LABEL]
        counts = Counter(zip(golds, answered))
        found = {
            "labels": labels,
            "per_label": {label: label_counts(preds, golds, label) for label in labels},
            "confusion": {"rows": labels, "columns": columns,
                          "counts": [[counts[(gold, col)] for col in columns] for gold in labels]},
            "parse_errors": parse_errors(parsed),
        }
        reliability = _calibration(parsed, records)
        if reliability is not None:
            found["calibration"] = reliability
        return found

    def record_score(self, parsed: Parsed, record: Record) -> float:
        """1 for the right label, else 0."""
        return float(parsed.value == record.output)

    def teacher_messages(self, record: Record) -> list[dict[str, str]]:
        """The student's messages; when the user turn does not name every candidate, the label list is added."""
        messages = self.messages(record)
        if any(label not in messages[-1]["content"] for label in self.candidates(record)):
            messages[-1] = {**messages[-1], "content": f"{messages[-1]['content']}\n\n{self.default_instruction(record)}"}
        return messages

    def request_problem(self, record: Record) -> str | None:
        if self.candidates(record):
            return None
        return f"task '{self.config.name}' has no fixed labels: send 'candidates', the labels to choose from"

    @classmethod
    def report_bars(cls, summary: dict[str, Any]) -> ReportBars:
        systems = summary["systems"]
        groups = list(dict.fromkeys(label for s in systems.values() for label in s["details"]["labels"]))
        return ReportBars("F1 per label", groups, {
            name: [s["details"]["per_label"].get(label, {}).get("f1", 0.0) for label in groups]
            for name, s in systems.items()})

    @classmethod
    def report_sections(cls, summary: dict[str, Any], predictions: list[dict[str, Any]]) -> list[ReportSection]:
        """One confusion matrix per system (rows: reference label, columns: the answer), and the calibration table
        of each system whose answers carry probabilities."""
        tables = []
        for name, system in summary["systems"].items():
            confusion = system["details"]["confusion"]
            rows = [[gold, *counts] for gold, counts in zip(confusion["rows"], confusion["counts"])]
            tables.append(ReportTable(["", *confusion["columns"]], rows, "heat", caption=name))
        sections = [ReportSection("Confusion matrices", "Rows: reference label; columns: the system's answer.",
                                  tables, "confusion")]
        calibrated = [
            ReportTable(["confidence", "answers", "mean confidence", "accuracy"],
                        [[f"{b['low']:.1f}-{b['high']:.1f}", b["count"], f"{b['confidence']:.3f}", f"{b['accuracy']:.3f}"]
                         for b in bins], caption=name)
            for name, bins in cls.report_calibration(summary).items()
        ]
        if calibrated:
            sections.append(ReportSection(
                "Calibration", "Answers grouped by the probability the system gave its answer (10 bins): a calibrated "
                "system is right as often as it is sure; ece is the answer-weighted mean gap.", calibrated, "calibration"))
        return sections

    @classmethod
    def report_calibration(cls, summary: dict[str, Any]) -> dict[str, list[dict[str, float]]]:
        return {name: system["details"]["calibration"]["bins"] for name, system in summary["systems"].items()
                if "calibration" in system["details"]}


def _calibration(parsed: list[Parsed], records: list[Record]) -> dict[str, Any] | None:
    """ECE and reliability bins of the answers' top probabilities against their correctness; None unless every
    answer carries probabilities."""
    if not parsed or any(not p.probabilities for p in parsed):
        return None
    confidences = [max(p.probabilities.values()) for p in parsed]
    return calibration(confidences, [p.value == r.output for p, r in zip(parsed, records)])
