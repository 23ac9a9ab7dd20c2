"""A character CRF tagger, the classic named-entity baseline: BIO tags over an extract task's list fields.

Each field (`type: list`) is an entity type. Training records give entity strings, not spans, so each string is
located in the text (all its occurrences; longer strings first, overlaps skipped) and tagged B-<field>/I-<field>.
Features are the character, its neighbours two either side, the bigrams around it and simple character classes.
The answer is the model's: per field, in the declared order, the distinct strings tagged, in order of appearance.
"""

from __future__ import annotations

import json
import unicodedata

from smalltune.config import TaskConfig
from smalltune.data.records import Record
from smalltune.errors import ConfigError
from smalltune.evaluation.baselines import Baseline
from smalltune.tasks import build_task

Span = tuple[int, int, str]  # start, end (exclusive), field
OUTSIDE = "O"
EDGES = ("<s>", "</s>")  # what stands before the text's first character and after its last


def char_class(char: str) -> str:
    """digit, han, latin, space, punct or other; a text edge marker (EDGES) stands for itself."""
    if char in EDGES:
        return char
    if char.isdigit():
        return "digit"
    if "\u4e00" <= char <= "\u9fff" or "\u3400" <= char <= "\u4dbf":
        return "han"
    if char.isalpha():
        return "latin"
    if char.isspace():
        return "space"
    return "punct" if unicodedata.category(char)[0] in "PS" else "other"


def char_at(text: str, j: int) -> str:
    """The character at j, or the edge marker before or after the text."""
    if j < 0:
        return EDGES[0]
    return text[j] if j < len(text) else EDGES[1]


def char_features(text: str, i: int) -> dict[str, str]:
    """The CRF features of the character at i: characters at -2..+2, the bigrams -1/0 and 0/+1, classes at -1..+1."""
    window = {offset: char_at(text, i + offset) for offset in range(-2, 3)}
    features = {f"c{offset}": char for offset, char in window.items()}
    features |= {"b-1": window[-1] + window[0], "b+1": window[0] + window[1]}
    return features | {f"k{offset}": char_class(window[offset]) for offset in (-1, 0, 1)}


def text_features(text: str) -> list[dict[str, str]]:
    """Every character's features, in order."""
    return [char_features(text, i) for i in range(len(text))]


def entity_spans(text: str, entities: dict[str, list[str]]) -> list[Span]:
    """Every occurrence of every entity string in the text, longer strings first, none overlapping one taken."""
    found = sorted(((entity, field) for field, strings in entities.items() for entity in strings if entity),
                   key=lambda pair: -len(pair[0]))
    taken = [False] * len(text)
    spans = []
    for entity, field in found:
        start = text.find(entity)
        while start >= 0:
            end = start + len(entity)
            if not any(taken[start:end]):
                taken[start:end] = [True] * len(entity)
                spans.append((start, end, field))
            start = text.find(entity, end)
    return sorted(spans)


def bio_tags(length: int, spans: list[Span]) -> list[str]:
    """B-<field> at each span's first character, I-<field> on the rest, O elsewhere."""
    tags = [OUTSIDE] * length
    for start, end, field in spans:
        tags[start:end] = [f"B-{field}"] + [f"I-{field}"] * (end - start - 1)
    return tags


def tagged_spans(tags: list[str]) -> list[Span]:
    """The spans a BIO sequence marks (an I- tag after another field's tag, or after O, starts a span)."""
    spans: list[Span] = []
    for i, tag in enumerate(tags):
        if tag == OUTSIDE:
            continue
        head, field = tag.split("-", 1)
        if head == "I" and spans and spans[-1][1] == i and spans[-1][2] == field:
            spans[-1] = (spans[-1][0], i + 1, field)
        else:
            spans.append((i, i + 1, field))
    return spans


def span_entities(text: str, spans: list[Span], fields: list[str]) -> dict[str, list[str]]:
    """Per field (in the given order), the distinct strings of its spans in order of appearance."""
    found: dict[str, list[str]] = {field: [] for field in fields}
    for start, end, field in spans:
        if field in found and text[start:end] not in found[field]:
            found[field].append(text[start:end])
    return found


class CharCrf:
    """The tagger itself, for the given fields: a character CRF (sklearn-crfsuite; L-BFGS, L1 and L2 penalties)."""

    def __init__(self, fields: list[str]):
        self.fields = fields
        self.model = None

    def fit(self, texts: list[str], entities: list[dict[str, list[str]]]) -> None:
        """Learn from texts and, per text, its entity strings per field (all their occurrences tagged)."""
        import sklearn_crfsuite

        self.model = sklearn_crfsuite.CRF(algorithm="lbfgs", c1=0.1, c2=0.1, max_iterations=100,
                                          all_possible_transitions=True)
        tags = [bio_tags(len(text), entity_spans(text, found)) for text, found in zip(texts, entities, strict=True)]
        self.model.fit([text_features(text) for text in texts], tags)

    def entities(self, texts: list[str]) -> list[dict[str, list[str]]]:
        """Per text, every field's distinct tagged strings in order of appearance."""
        tags = self.model.predict([text_features(text) for text in texts])
        return [span_entities(text, tagged_spans(list(t)), self.fields) for text, t in zip(texts, tags)]


class CrfTagger(Baseline):
    """`CharCrf` over the task's fields, each of which must be `type: list`; answers the task's JSON."""

    name = "crf-tagger"
    kinds = ("extract",)

    def __init__(self, config: TaskConfig):
        super().__init__(config)
        not_lists = [name for name, spec in config.fields.items() if spec.type != "list"]
        if not_lists:
            raise ConfigError(f"eval.baselines: {self.name} tags entity lists, and fields {not_lists} are not "
                              "`type: list`: declare each field `type: list`, or remove it from eval.baselines")
        self.task = build_task(config)
        self.tagger = CharCrf(list(config.fields))

    def fit(self, train: list[Record]) -> None:
        self.tagger.fit([r.input for r in train], [json.loads(self.task.answer(r)) for r in train])

    def answer(self, records: list[Record]) -> list[str]:
        return [json.dumps(found, ensure_ascii=False) for found in self.tagger.entities([r.input for r in records])]
