"""Constrained decoding: answers that are valid by construction, through xgrammar.

For `extract` the answer is the task's canonical JSON object (declared fields, in order, string
values); with grounding, the value of each extractive field can only be text that occurs in the
record's input. For `classify` the answer is one of the record's candidate labels. `chat` is free.
The grammars spell exactly what `TaskKind.answer` writes for training, so the constraint never
pushes the model away from the form it learned.
"""

from __future__ import annotations

import json

import xgrammar as xgr
from xgrammar.contrib.hf import LogitsProcessor as GrammarProcessor
from transformers import LogitsProcessor, PreTrainedTokenizerBase

from smalltune.data import Record
from smalltune.tasks import TaskKind

_JSON_STRING = r'''"\"" char* "\""
char ::= [^"\\\x00-\x1f] | "\\" (["\\/bfnrt] | "u" [0-9a-fA-F] [0-9a-fA-F] [0-9a-fA-F] [0-9a-fA-F])'''


def ebnf_literal(text: str) -> str:
    """`text` as an EBNF string literal."""
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _json_escaped(char: str) -> str:
    """How `json.dumps(..., ensure_ascii=False)` writes one character inside a string."""
    return json.dumps(char, ensure_ascii=False)[1:-1]


def substring_automaton(text: str) -> list[dict[str, int]]:
    """The suffix automaton of `text`: state 0 is the start, every path from it spells a substring.

    Returned as the transitions of each state (at most 2n states and 3n transitions).
    """
    transitions: list[dict[str, int]] = [{}]
    link, length, last = [-1], [0], 0
    for char in text:
        current = len(transitions)
        transitions.append({})
        length.append(length[last] + 1)
        link.append(0)
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
                while state != -1 and transitions[state].get(char) == nxt:
                    transitions[state][char] = clone
                    state = link[state]
                link[nxt] = link[current] = clone
        last = current
    return transitions


def substring_rules(text: str, prefix: str) -> str:
    """EBNF rules `<prefix>0 ...` matching any substring of `text`, JSON-escaped (the empty one included)."""
    rules = []
    for state, moves in enumerate(substring_automaton(text)):
        options = [f"{ebnf_literal(_json_escaped(c))} {prefix}{target}" for c, target in moves.items()]
        rules.append(f"{prefix}{state} ::= " + " | ".join([*options, '""']))
    return "\n".join(rules)


def extract_grammar(fields: dict[str, bool], text: str | None) -> str:
    """EBNF of the canonical answer object; `fields` maps each name to whether its value is grounded in `text`."""
    parts, grounded = [], text is not None and any(fields.values())
    for i, (name, extractive) in enumerate(fields.items()):
        key = ebnf_literal(("" if i == 0 else ", ") + json.dumps(name, ensure_ascii=False) + ": ")
        value = '"\\"" s0 "\\""' if extractive and grounded else "string"
        parts.append(f"{key} {value}")
    root = 'root ::= "{" ' + " ".join(parts) + ' "}"'
    rules = [root, "string ::= " + _JSON_STRING]
    if grounded:
        rules.append(substring_rules(text, "s"))
    return "\n".join(rules)


def choice_grammar(labels: list[str]) -> str:
    """EBNF of exactly one of the labels."""
    return "root ::= " + " | ".join(ebnf_literal(label) for label in labels)


def record_grammar(task: TaskKind, record: Record, grounded: bool) -> str | None:
    """The EBNF grammar this record's answer must follow; None for free text (chat)."""
    config = task.config
    if config.kind == "extract":
        fields = {name: spec.extractive for name, spec in config.fields.items()}
        return extract_grammar(fields, record.input if grounded else None)
    if config.kind == "classify":
        return choice_grammar(task.candidates(record))
    return None


class Grammars:
    """Compiles (and caches) the grammar each record's answer must follow."""

    def __init__(self, tokenizer: PreTrainedTokenizerBase, task: TaskKind, vocab_size: int,
                 stop_ids: list[int], grounded: bool):
        info = xgr.TokenizerInfo.from_huggingface(tokenizer, vocab_size=vocab_size, stop_token_ids=stop_ids)
        self.compiler = xgr.GrammarCompiler(info)
        self.task = task
        self.grounded = grounded
        self._cache: dict[str, xgr.CompiledGrammar] = {}

    def _compiled(self, ebnf: str) -> xgr.CompiledGrammar:
        if ebnf not in self._cache:
            if len(self._cache) > 256:
                self._cache.clear()
            self._cache[ebnf] = self.compiler.compile_grammar(ebnf)
        return self._cache[ebnf]

    def for_record(self, record: Record) -> xgr.CompiledGrammar | None:
        """The compiled grammar for this record's answer, or None when the task kind is free text."""
        ebnf = record_grammar(self.task, record, self.grounded)
        return None if ebnf is None else self._compiled(ebnf)


def logits_processor(grammars: list[xgr.CompiledGrammar]) -> LogitsProcessor:
    """A processor for one `generate` call whose batch row i follows grammars[i]."""
    return GrammarProcessor(grammars)
