"""chat: a reply in a persona, scored against the reference reply."""

from __future__ import annotations

from typing import Any

from smalltune.data.records import Record
from smalltune.tasks.base import Parsed, ReportBars, ReportSection, ReportTable, TaskKind
from smalltune.tasks.metrics import char_f1, length_stats, rouge_l

SAMPLE_REPLIES = 5
_LENGTHS = ("mean", "median", "p90", "min", "max")


class ChatTask(TaskKind):
    """A reply in a persona; scored against the reference reply. Served as OpenAI chat completions only."""

    headline = "rouge_l"
    example = """system: 你是一位耐心的客服。
"""

    def check(self, record: Record) -> str | None:
        return None if isinstance(record.output, str) and record.output.strip() else "'output' must be a non-empty reply"

    def parse(self, text: str, record: Record) -> Parsed:
        return Parsed(text.strip())

    def score(self, parsed: list[Parsed], records: list[Record]) -> dict[str, float]:
        """Character F1 and character ROUGE-L against the reference reply, and the mean reply length."""
        return self.aggregate([self.record_facts(p, r) for p, r in zip(parsed, records, strict=True)])

    def record_facts(self, parsed: Parsed, record: Record) -> dict[str, float]:
        """One reply's character F1, character ROUGE-L and length (ROUGE-L's quadratic work done once per reply)."""
        reply = parsed.value or ""
        return {"char_f1": char_f1(reply, str(record.output)), "rouge_l": rouge_l(reply, str(record.output)),
                "reply_chars": len(reply)}

    def aggregate(self, facts: list[dict[str, float]]) -> dict[str, float]:
        """The means of the replies' `record_facts`."""
        n = max(len(facts), 1)
        return {metric: sum(f[metric] for f in facts) / n for metric in ("char_f1", "rouge_l", "reply_chars")}

    def details(self, parsed: list[Parsed], records: list[Record]) -> dict[str, Any]:
        """Length statistics (characters) of the replies and of the reference replies."""
        return {
            "reply_chars": length_stats([len(p.value or "") for p in parsed]),
            "reference_chars": length_stats([len(str(r.output)) for r in records]),
        }

    def record_score(self, parsed: Parsed, record: Record) -> float:
        """Character ROUGE-L of the reply against the reference."""
        return rouge_l(parsed.value or "", str(record.output))

    @classmethod
    def report_bars(cls, summary: dict[str, Any]) -> ReportBars:
        groups = ["char_f1", "rouge_l"]
        return ReportBars("reply scores", groups,
                          {name: [s["metrics"][m] for m in groups] for name, s in summary["systems"].items()})

    @classmethod
    def report_sections(cls, summary: dict[str, Any], predictions: list[dict[str, Any]]) -> list[ReportSection]:
        """Reply lengths per system beside the reference replies', and the first replies side by side."""
        systems = summary["systems"]
        stats = {name: s["details"]["reply_chars"] for name, s in systems.items()}
        stats["reference"] = next(iter(systems.values()))["details"]["reference_chars"]
        lengths = [[name, *(f"{row[k]:.0f}" for k in _LENGTHS)] for name, row in stats.items()]
        names = list(systems)
        samples = [[p["input"], p["reference_answer"], *(p["answers"].get(name, "") for name in names)]
                   for p in predictions[:SAMPLE_REPLIES]]
        return [
            ReportSection("Reply length", "Characters per reply.",
                          [ReportTable(["replies of", *_LENGTHS], lengths)], "lengths"),
            ReportSection("Sample replies", "The first held-out lines, answered by each system.",
                          [ReportTable(["input", "reference", *names], samples, "text")], "samples"),
        ]
