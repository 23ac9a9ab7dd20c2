"""Answers by line reference: the input shown as numbered lines, a field's text as ranges of them, and back.

A `lines` extraction field (`FieldSpec.type`) is answered with line numbers instead of copied text, so a body of
20,000 characters costs a few answer tokens and can never be invented. The prompt shows each non-blank line of the
input as `[n]text` (its text cut after `model.line_chars` characters, then '…': the model needs enough of a line
to judge it); the answer is the JSON list of `[start, end]` ranges (`[[12, 30], [33, 35]]`); parsing builds the
text from the input's own lines, joined with newlines.

`[n]` has no space after it: with Qwen's tokenizer the line's text then tokenises exactly as it would alone (a
space would split its first Chinese character into byte tokens), the number's digits are the same one-digit
tokens the answer writes, and the brackets keep it apart from a number the line starts with (`[12]2025年`).
"""

from __future__ import annotations

import bisect
import re
from typing import Any, NamedTuple

from smalltune.tasks.text import normalise

_LINE = re.compile(r"[^\r\n]+")
_ELLIPSIS = "…"
MIN_COVERED = 0.95
"""The share of a lines field's text (its characters after `normalise`) that whole lines of the input must cover:
the rest may be text the page shows on no line of its own (a player's `00:00/00:00`, an ad the labeller copied).
Of 24 real labelled pages (../shared/data/web-pages) 19 are whole lines exactly, 3 more are 97-99% covered, and 2
(78%, 88%: lines the labels cut in the middle, script text) are refused."""


class Line(NamedTuple):
    """A non-blank line of an input: its text without surrounding spaces, and where it ends in the input."""

    text: str
    end: int


class ShownLine(NamedTuple):
    """A line as the prompt shows it: `[n]` and its text, cut after `width` characters (then '…')."""

    prompt: str  # the prompt's line: "[12]各区县人民政府…"
    seen: str  # the line's text the model sees (cut, without the '…')
    end: int  # where the line ends in the input


def input_lines(text: str) -> list[Line]:
    """The non-blank lines of `text` (broken at \\n, \\r\\n or \\r), stripped; line n is element n - 1."""
    return [Line(match[0].strip(), match.end()) for match in _LINE.finditer(text) if match[0].strip()]


def shown_lines(text: str, width: int | None) -> list[ShownLine]:
    """Each non-blank line of `text` as the prompt shows it (`width` None: whole)."""
    shown = []
    for number, line in enumerate(input_lines(text), start=1):
        seen = line.text if width is None else line.text[:width]
        cut = _ELLIPSIS if len(seen) < len(line.text) else ""
        shown.append(ShownLine(f"[{number}]{seen}{cut}", seen, line.end))
    return shown


def numbered(text: str, width: int | None) -> str:
    """`text` as the prompt shows it: one numbered line per non-blank line (`shown_lines`)."""
    return "\n".join(line.prompt for line in shown_lines(text, width))


def seen_text(text: str, width: int | None) -> str:
    """What the model sees of `text`'s lines (cut, no numbers, no '…'), one per line: what grounded values copy."""
    return "\n".join(line.seen for line in shown_lines(text, width))


def merged(ranges: list[list[int]]) -> list[list[int]]:
    """Ranges in ascending order, overlapping or adjacent ones joined: the canonical form of an answer."""
    joined: list[list[int]] = []
    for start, end in sorted(ranges):
        if joined and start <= joined[-1][1] + 1:
            joined[-1][1] = max(joined[-1][1], end)
        else:
            joined.append([start, end])
    return joined


def ranges_problem(value: Any, count: int) -> str | None:
    """Why `value` is not a list of line ranges [start, end] with 1 <= start <= end <= `count`, or None."""
    if not isinstance(value, list) or not all(
            isinstance(pair, list) and len(pair) == 2 and all(type(n) is int for n in pair) for pair in value):
        return f"expected line ranges such as [[3, 5], [8, 8]], got {value!r:.60}"
    for start, end in value:
        if start > end:
            return f"the range [{start}, {end}] ends before it starts"
        if start < 1 or end > count:
            return f"the range [{start}, {end}] is not within the input's lines 1..{count}"
    return None


def ranges_text(ranges: list[list[int]], lines: list[Line]) -> str:
    """The text of the lines the ranges cover (`ranges_problem` found none wrong), in input order, each once."""
    return "\n".join(lines[n - 1].text for start, end in merged(ranges) for n in range(start, end + 1))


def line_ranges(gold: str, lines: list[Line], min_covered: float = MIN_COVERED) -> list[list[int]]:
    """The ranges of whole lines that make up `gold`: the lines, in input order, found in it one after another,
    covering the most of it, then in the fewest ranges. Lines and gold are compared after `normalise` (full and
    half width alike, whitespace ignored: line breaks, indents and the spaces a page renderer puts between inline
    elements do not matter). [] for an empty `gold`. Cost: lines x lines found, 0.3 s for a 1,000-line body.

    Raises ValueError quoting the first text of `gold` on no line of its own when the lines cover less than
    `min_covered` of it (a line cut in the middle is not found); 0 takes whatever lines are found.
    """
    target = normalise(gold)
    keys = [normalise(line.text) for line in lines]
    states: dict[tuple[int, bool], _Match] = {(0, False): _Match(0, ())}  # (end in target, last line taken) -> best
    for number, key in enumerate(keys, start=1):
        found = _occurrences(target, key)
        step: dict[tuple[int, bool], _Match] = {}
        for (end, run_open), match in states.items():
            _keep_better(step, (end, False), match)
            at = found[bisect.bisect_left(found, end)] if found and found[-1] >= end else None
            if at is not None:
                ranges = match.ranges[:-1] + ((match.ranges[-1][0], number),) if run_open \
                    else match.ranges + ((number, number),)
                _keep_better(step, (at + len(key), True), _Match(match.covered + len(key), ranges))
        states = step
    best = max(states.values(), key=_Match.rank)
    if target and best.covered < min_covered * len(target):
        gap = _first_gap(target, [keys[n - 1] for start, end in best.ranges for n in range(start, end + 1)])
        raise ValueError(f"only {best.covered / len(target):.0%} of the text is whole lines of the input (at least "
                         f"{min_covered:.0%} must be): {gap!r} (spaces removed) is on no line of its own; give whole "
                         "lines of the input, or make the field type: string")
    return [list(pair) for pair in best.ranges]


class _Match(NamedTuple):
    """Lines found in a gold text so far: how many of its characters they cover, and their ranges."""

    covered: int
    ranges: tuple[tuple[int, int], ...]

    def rank(self) -> tuple[int, int]:
        """Better: more covered, then fewer ranges."""
        return self.covered, -len(self.ranges)


def _occurrences(text: str, key: str) -> list[int]:
    """Where `key` starts in `text`, ascending (none for an empty key)."""
    found, at = [], text.find(key) if key else -1
    while at >= 0:
        found.append(at)
        at = text.find(key, at + 1)
    return found


def _keep_better(states: dict[tuple[int, bool], _Match], key: tuple[int, bool], match: _Match) -> None:
    """Keep `match` for the state `key` unless it already has one as good."""
    if key not in states or match.rank() > states[key].rank():
        states[key] = match


def _first_gap(target: str, keys: list[str]) -> str:
    """The first 20 characters of `target` that the found lines `keys` (in order) do not cover."""
    end = 0
    for key in keys:
        at = target.find(key, end)
        if at > end:
            break
        end = at + len(key)
    return target[end : end + 20]
