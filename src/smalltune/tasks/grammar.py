"""Answer grammars as EBNF text: pure builders, no tokenizer, no decoder.

The task kinds build each record's grammar from these (`TaskKind.grammar`); the engines compile it
(xgrammar in `inference.constrain`, vLLM's structured outputs). A grammar spells exactly what
`TaskKind.answer` writes for training, so the constraint never pushes the model away from the form it learned.
With grounding, an extractive value is spelled through a suffix automaton of the input text: at most 2n
states for n characters, so only substrings can be written, and any substring that does not stop inside a run of
ASCII letters or digits (`situ.jing@qq.com`, not `sit`). That boundary keeps a tokenisation trap shut: a model
that writes `sit` as one token (it learned `s` + `itu`, the answer's canonical tokens) finds only `u` left to
continue with, and closing the string would otherwise be the likelier choice. The engines ground on the
input as the model is shown it (shortened to fit model.max_length), and at most `MAX_GROUNDED_CHARS` of it.
A `lines` field's value is a list of line ranges `[start, end]` (`tasks.lines`): each number a line of the input
(1..n) and no range ending before it starts, through one rule per line number, O(n) rules. Their order is not
constrained (that would take a rule per pair of lines): parsing sorts and joins them.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import NamedTuple

from smalltune.config import FieldSpec
from smalltune.errors import InputError

MAX_GROUNDED_CHARS = 16_000
"""The longest text a grounded grammar copies from: about 4,096 tokens of English (6,000 of Chinese text fit
4,096 tokens). Past it the grammar's size and compile time would be the request's to choose."""

_ESCAPED = re.compile(r'["\\\x00-\x1f\x7f-\x9f]')
"""What an EBNF literal cannot hold as itself: quotes, backslashes, control characters (a raw newline or NUL
ends the literal)."""


def _escape(match: re.Match[str]) -> str:
    char = match[0]
    return "\\" + char if char in '"\\' else f"\\u{ord(char):04x}"


def ebnf_literal(text: str) -> str:
    """`text` as an EBNF string literal: quotes and backslashes escaped, control characters as \\uXXXX."""
    return '"' + _ESCAPED.sub(_escape, text) + '"'


def _json_escaped(char: str) -> str:
    """How `json.dumps(..., ensure_ascii=False)` writes one character inside a string."""
    return json.dumps(char, ensure_ascii=False)[1:-1]


class Automaton(NamedTuple):
    """A suffix automaton: state 0 is the start, every path from it spells a substring of the text."""

    transitions: list[dict[str, int]]  # per state: character -> next state (at most 2n states, 3n transitions)
    may_end: list[bool]  # per state: whether its substrings end, somewhere in the text, at a word boundary


def ends_inside_a_word(text: str, end: int) -> bool:
    """Whether a span ending before text[end] would cut a run of ASCII letters or of ASCII digits."""
    if end <= 0 or end >= len(text):
        return False
    before, after = text[end - 1], text[end]
    return before.isascii() and after.isascii() and (
        (before.isalpha() and after.isalpha()) or (before.isdigit() and after.isdigit()))


def substring_automaton(text: str) -> Automaton:
    """The suffix automaton of `text`, each state marked with whether a value may end there (`ends_inside_a_word`
    false for one of its occurrences)."""
    transitions: list[dict[str, int]] = [{}]
    link, length, last = [-1], [0], 0
    may_end = [True]  # the empty value
    for position, char in enumerate(text):
        current = len(transitions)
        transitions.append({})
        length.append(length[last] + 1)
        link.append(0)
        may_end.append(not ends_inside_a_word(text, position + 1))
        state = last
        while state != -1 and char not in transitions[state]:
            transitions[state][char] = current
            state = link[state]
        if state != -1:
            nxt = transitions[state][char]
            if length[state] + 1 == length[nxt]:
                link[current] = nxt
            else:
                clone = len(transitions)
                transitions.append(dict(transitions[nxt]))
                length.append(length[state] + 1)
                link.append(link[nxt])
                may_end.append(False)
                while state != -1 and transitions[state].get(char) == nxt:
                    transitions[state][char] = clone
                    state = link[state]
                link[nxt] = link[current] = clone
        last = current
    for state in sorted(range(1, len(transitions)), key=length.__getitem__, reverse=True):
        may_end[link[state]] = may_end[link[state]] or may_end[state]  # a state's ends include its link children's
    return Automaton(transitions, may_end)


def substring_rules(text: str, prefix: str, nonempty: bool = False) -> str:
    """EBNF rules `<prefix>0 ...` matching the substrings of `text` that may end a value (`substring_automaton`),
    JSON-escaped, the empty one included; with `nonempty` (and a non-empty `text`) also `<prefix>n`: the same
    substrings less the empty one.

    Raises InputError when `text` is longer than MAX_GROUNDED_CHARS.
    """
    if len(text) > MAX_GROUNDED_CHARS:
        raise InputError(f"the input as shown is {len(text):,} characters, more than the {MAX_GROUNDED_CHARS:,} "
                         "grounded decoding copies from: send a shorter input, lower model.max_length, "
                         "or set infer.grounded: false")
    rules = []
    automaton = substring_automaton(text)
    for state, moves in enumerate(automaton.transitions):
        options = [f"{ebnf_literal(_json_escaped(c))} {prefix}{target}" for c, target in moves.items()]
        if state == 0 and nonempty and options:
            rules.append(f"{prefix}n ::= " + " | ".join(options))
        if automaton.may_end[state]:
            options.append('""')
        rules.append(f"{prefix}{state} ::= " + " | ".join(options))
    return "\n".join(rules)


_CHAR = r'''char ::= [^"\\\x00-\x1f] | "\\" (["\\/bfnrt] | "u" [0-9a-fA-F] [0-9a-fA-F] [0-9a-fA-F] [0-9a-fA-F])'''
_DATE = (r'date ::= "\"" [0-9] [0-9] [0-9] [0-9] "-" ("0" [1-9] | "1" [0-2]) "-" ("0" [1-9] | [12] [0-9] | "3" [01])'
         r' "\""')
_HELPERS = {  # name -> (its rule, the helpers it names)
    "string": (r'string ::= "\"" char* "\""', ("char",)),
    "text": (r'text ::= "\"" char+ "\""', ("char",)),  # a non-empty string
    "char": (_CHAR, ()),
    "integer": ('integer ::= "-"? ("0" | [1-9] [0-9]*)', ()),
    "number": ('number ::= integer ("." [0-9]+)? ([eE] [-+]? [0-9]+)?', ("integer",)),
    "date": (_DATE, ()),
}
_COPIED, _COPIED_SOME = r'"\"" s0 "\""', r'"\"" sn "\""'  # a grounded string; a grounded non-empty one


class _Value(NamedTuple):
    """One field's value in EBNF, the helper rules it names, and whether it copies through `sn` (non-empty)."""

    ebnf: str
    helpers: tuple[str, ...] = ()
    copies_some: bool = False


def _some_text(copied: bool, can_copy: bool) -> _Value | None:
    """A non-empty string (a list item, an optional string's value): copied when `copied`, None when it must be
    copied and the grounding text is empty."""
    if not copied:
        return _Value("text", ("text",))
    return _Value(_COPIED_SOME, copies_some=True) if can_copy else None


def _text_value(spec: FieldSpec, copied: bool, can_copy: bool) -> _Value:
    """A string or list field's value (without its null)."""
    some = _some_text(copied, can_copy)
    if spec.type == "list":
        if some is None:
            return _Value('"[]"')
        more = "*" if spec.max_items is None else f"{{0,{spec.max_items - 1}}}"
        return _Value(f'"[" ({some.ebnf} (", " {some.ebnf}){more})? "]"', some.helpers, some.copies_some)
    if spec.optional:
        return some or _Value('"null"')
    return _Value(_COPIED) if copied else _Value("string", ("string",))


def _field_value(spec: FieldSpec, copied: bool, can_copy: bool) -> _Value:
    """One field's value as `json.dumps(..., ensure_ascii=False)` writes it (or null, when optional); `copied`:
    spelled from the grounding text, which is not empty when `can_copy`; a lines field's through `ranges`."""
    if spec.type == "lines":
        value = _Value("ranges")
    elif spec.type in ("string", "list"):
        value = _text_value(spec, copied, can_copy)
    elif spec.type == "choice":
        value = _Value(" | ".join(ebnf_literal(json.dumps(c, ensure_ascii=False)) for c in spec.choices or ()))
    elif spec.type == "boolean":
        value = _Value('"true" | "false"')
    else:
        value = _Value(spec.type, (spec.type,))
    return value._replace(ebnf=f'({value.ebnf} | "null")' if spec.optional else f"({value.ebnf})")


def _helper_rules(names: set[str]) -> list[str]:
    """The helper rules named and those they name, each once, in `_HELPERS` order."""
    needed, todo = set(), list(names)
    while todo:
        name = todo.pop()
        if name not in needed:
            needed.add(name)
            todo += _HELPERS[name][1]
    return [rule for name, (rule, _) in _HELPERS.items() if name in needed]


def extract_grammar(fields: Mapping[str, FieldSpec], text: str | None, line_count: int = 0) -> str:
    """EBNF of the canonical answer object: the declared fields in order, each value of its type; with a
    grounding `text`, extractive values (a list's items) are spelled from it, all through one set of substring
    rules; lines fields name lines 1..`line_count` of the input (`line_ranges_rules`)."""
    grounded = text is not None and any(spec.extractive for spec in fields.values())
    values = [_field_value(spec, grounded and bool(spec.extractive), bool(text)) for spec in fields.values()]
    keys = [ebnf_literal(("" if i == 0 else ", ") + json.dumps(name, ensure_ascii=False) + ": ")
            for i, name in enumerate(fields)]
    rules = ['root ::= "{" ' + " ".join(f"{key} {value.ebnf}" for key, value in zip(keys, values)) + ' "}"']
    rules += _helper_rules({helper for value in values for helper in value.helpers})
    if grounded:
        rules.append(substring_rules(text, "s", nonempty=any(value.copies_some for value in values)))
    if any(spec.type == "lines" for spec in fields.values()):
        rules += line_ranges_rules(line_count)
    return "\n".join(rules)


def line_ranges_rules(count: int) -> list[str]:
    """EBNF `ranges`: the canonical answer of a lines field as `json.dumps` writes it (`[[3, 5], [8, 8]]`): ranges
    of lines 1..`count`, each start <= end, each next range starting past the line after the last one's end (what
    `tasks.lines.merged` writes), so an answer is at most `count` / 2 ranges; only `[]` when `count` is 0."""
    if count == 0:
        return ['ranges ::= "[]"']
    numbers = _LineNumbers(count)
    return [f'ranges ::= "[]" | "[[" {numbers.at_least("ls", 1)}', *numbers.rules()]


class _LineNumbers:
    """The rules of line numbers in ranges: each number, written digit by digit, followed by what its role allows.
    A start k (role `ls`) is followed by an end from k on; an end k (role `le`) by `]` and either the list's end or
    a next start from k + 2 on. Rules, made as they are first named: `<role><k>` (the digits so far spell k, a
    number or the start of a longer one), `<role><k>x<n>` (k and at least n more digits), `<role><m>t<j>` (numbers
    >= m whose first j digits are m's): O(count x digits) in all."""

    def __init__(self, count: int):
        self.count = count
        self._named: set[str] = set()
        self._todo: list[tuple[str, tuple]] = []

    def _name(self, name: str, spec: tuple) -> str:
        if name not in self._named:
            self._named.add(name)
            self._todo.append((name, spec))
        return name

    def at_least(self, role: str, low: int) -> str:
        """The rule of a number from `low` to the last line (low <= count), then its role's continuation."""
        return self._tight(role, str(low), 0)

    def _tight(self, role: str, low: str, j: int) -> str:
        return self._longer(role, int(low), 0) if j == len(low) else self._name(f"{role}{low}t{j}", (role, low, j))

    def _longer(self, role: str, prefix: int, more: int) -> str:
        """`prefix` followed by at least `more` digits (a line number in all); viable: prefix * 10**more <= count."""
        return self._name(f"{role}{prefix}" + (f"x{more}" if more else ""), (role, prefix, more))

    def rules(self) -> list[str]:
        """Every rule named so far, and those their bodies name, once each."""
        written = []
        while self._todo:
            name, spec = self._todo.pop()
            body = self._tight_body(*spec) if isinstance(spec[1], str) else self._longer_body(*spec)
            written.append(f"{name} ::= {body}")
        return written

    def _digits(self, role: str, prefix: int, more: int, digits: range) -> list[str]:
        """'"d" <rule>' for each digit d in `digits` after which a line number with `more` further digits exists."""
        return [f'"{d}" {self._longer(role, prefix * 10 + d, more)}' for d in digits
                if (prefix * 10 + d) * 10**more <= self.count]

    def _longer_body(self, role: str, prefix: int, more: int) -> str:
        finished = [self._after(role, prefix)] if more == 0 else []
        return " | ".join([*finished, *self._digits(role, prefix, max(more - 1, 0), range(10))])

    def _tight_body(self, role: str, low: str, j: int) -> str:
        prefix, digit, left = int(low[:j] or 0), int(low[j]), len(low) - j - 1
        return " | ".join([*self._digits(role, prefix, left + 1, range(1 if j == 0 else 0, digit)),
                           f'"{digit}" {self._tight(role, low, j + 1)}',
                           *self._digits(role, prefix, left, range(digit + 1, 10))])

    def _after(self, role: str, number: int) -> str:
        """What follows a finished number: a start's end (from the start on), an end's `]` and what may follow."""
        if role == "ls":
            return f'", " {self.at_least("le", number)}'
        more = f' | ", [" {self.at_least("ls", number + 2)}' if number + 2 <= self.count else ""
        return f'"]" ("]"{more})'


def choice_grammar(labels: list[str]) -> str:
    """EBNF of exactly one of the labels; InputError when there are none."""
    if not labels:
        raise InputError("no labels to choose from: give the record its 'candidates' or the task 'labels'")
    return "root ::= " + " | ".join(ebnf_literal(label) for label in labels)
