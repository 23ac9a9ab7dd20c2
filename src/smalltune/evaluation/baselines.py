"""Non-LLM baselines a fine-tune is compared against, behind one small interface.

A baseline learns from the training records (or ignores them) and answers test records with text in
the task's canonical answer form, so the task's own `parse` and `score` judge it like any model.
Task files name baselines under `eval.baselines`; each name is a line of `smalltune.registry.BASELINES`.
"""

from __future__ import annotations

import json
import re
from typing import ClassVar

from smalltune.config import TaskConfig
from smalltune.data.records import Record
from smalltune.errors import ConfigError, DataError
from smalltune.registry import BASELINES
from smalltune.tasks import build_task
from smalltune.tasks.lines import input_lines, line_ranges
from smalltune.tasks.text import EMAIL, normalise_date


class Baseline:
    """A system without a language model, for the task kinds it names: fit on training records, then answer."""

    name: ClassVar[str]
    kinds: ClassVar[tuple[str, ...]]

    def __init__(self, config: TaskConfig):
        self.config = config

    def fit(self, train: list[Record]) -> None:
        """Learn from the training records (rules learn nothing)."""

    def answer(self, records: list[Record]) -> list[str]:
        """One answer text per record, in the task's answer form."""
        raise NotImplementedError

    def probabilities(self, records: list[Record]) -> list[dict[str, float]] | None:
        """Each record's candidate answers with the probability the baseline gives them; None when it gives none."""
        return None


def build_baseline(name: str, config: TaskConfig) -> Baseline:
    """The registered baseline `name` for this task; ConfigError names the choices, or the kinds it serves."""
    baseline = BASELINES.get(name)
    if config.kind not in baseline.kinds:
        raise ConfigError(f"eval.baselines: {name} is for kind {' or '.join(map(repr, baseline.kinds))}, "
                          f"not {config.kind!r}: remove it from eval.baselines")
    return baseline(config)


class TfidfLogReg(Baseline):
    """Character 1-3-gram TF-IDF and logistic regression; answers the likeliest of each record's candidates, its
    probabilities renormalised over them (a label unseen in training gets 0)."""

    name = "tfidf-logreg"
    kinds = ("classify",)

    def __init__(self, config: TaskConfig):
        super().__init__(config)
        self.task = build_task(config)
        self.model = None

    def fit(self, train: list[Record]) -> None:
        from sklearn.feature_extraction.text import TfidfVectorizer
        from sklearn.linear_model import LogisticRegression
        from sklearn.pipeline import make_pipeline

        self.model = make_pipeline(
            TfidfVectorizer(analyzer="char", ngram_range=(1, 3), sublinear_tf=True),
            LogisticRegression(solver="saga", max_iter=1000, random_state=0))  # saga: 20x faster than lbfgs here
        self.model.fit([r.input for r in train], [str(r.output) for r in train])

    def answer(self, records: list[Record]) -> list[str]:
        return [max(p, key=p.__getitem__) for p in self.probabilities(records)]

    def probabilities(self, records: list[Record]) -> list[dict[str, float]]:
        classes = list(self.model.classes_)
        found = []
        for record, row in zip(records, self.model.predict_proba([r.input for r in records])):
            fitted = dict(zip(classes, row))
            choices = {label: float(fitted.get(label, 0.0)) for label in self.task.choices(record)}
            total = sum(choices.values())
            found.append({label: p / total if total else 1 / len(choices) for label, p in choices.items()})
        return found


class PageExtractor(Baseline):
    """A rule-based article extractor on each record's page HTML (an `html` column, read into Record.extra).

    `extract` maps HTML to {title, publishtime, content}; the answer keeps the task's fields that it fills
    (the others empty), with the date normalised to YYYY-MM-DD like the training answers. A `lines` field is
    answered as the ranges of the record's input lines that the extracted text holds (`tasks.lines.line_ranges`,
    any share covered): the extractor's text scored as the whole lines of the page it found.
    """

    kinds = ("extract",)

    def __init__(self, config: TaskConfig):
        super().__init__(config)
        self.fields = config.fields

    def extract(self, page_html: str) -> dict[str, str]:
        """{title, publishtime, content} of one page ({} when nothing is found)."""
        raise NotImplementedError

    def answer(self, records: list[Record]) -> list[str]:
        answers = []
        for record in records:
            page_html = record.extra.get("html")
            if not isinstance(page_html, str):
                raise DataError(f"{record.where}: the {self.name} baseline reads the page from an 'html' column; add it")
            found = self.extract(page_html)
            found["publishtime"] = normalise_date(found.get("publishtime"))
            lines = input_lines(record.input)
            answers.append(json.dumps({name: line_ranges(found.get(name) or "", lines, min_covered=0)
                                       if spec.type == "lines" else found.get(name) or ""
                                       for name, spec in self.fields.items()}, ensure_ascii=False))
        return answers


class Trafilatura(PageExtractor):
    """trafilatura's main-text extraction, with its metadata (title, date)."""

    name = "trafilatura"

    def extract(self, page_html: str) -> dict[str, str]:
        import trafilatura

        document = trafilatura.bare_extraction(page_html, with_metadata=True)
        if document is None:
            return {}
        return {"title": document.title, "publishtime": document.date, "content": document.text}


class Gne(PageExtractor):
    """GNE (GeneralNewsExtractor), made for Chinese news pages."""

    name = "gne"

    def extract(self, page_html: str) -> dict[str, str]:
        from gne import GeneralNewsExtractor
        from gne.exceptions import NoContentException

        try:
            found = GeneralNewsExtractor().extract(page_html)
        except NoContentException:
            return {}
        return {"title": found["title"], "publishtime": found["publish_time"], "content": found["content"]}


_NAME = re.compile(
    r"(?:我叫|我是|本人|姓名|名字是|联系人|投诉人)(?:姓名)?[：:\s]*(?P<cued>[\u4e00-\u9fa5·]{2,4})"
    r"|(?P<titled>[\u4e00-\u9fa5]{2,4})[（(](?:先生|女士|小姐)[）)]"
)
_PROVINCE = re.compile(
    r"(?:北京|天津|上海|重庆)市|(?:内蒙古|广西|西藏|宁夏|新疆)[\u4e00-\u9fa5]{0,3}自治区|(?:香港|澳门)(?:特别行政区)?"
    r"|(?:河北|山西|辽宁|吉林|黑龙江|江苏|浙江|安徽|福建|江西|山东|河南|湖北|湖南|广东|海南|四川|贵州|云南|陕西"
    r"|甘肃|青海|台湾)省"
)
_CLAUSE_END = re.compile(r"[\s，,。；;！!？?、|/：:（()）【】]")
_BUILDING = re.compile(r"[座号室栋幢]")
_ADDRESS_TAIL = re.compile(r"(?:\d+单元)?\d+室|(?: \d{6}|\d+樓)(?!\d)")
_SENTENCE = re.compile(r"[^。！？!?\n]+[。！？!?]*")
_HAN = re.compile(r"[\u4e00-\u9fa5]")
_TRIM = " \t\r\n，,。；;：:、|/-—~#%&*【】[]（）()！!？?\"'“”"


class ComplaintRules(Baseline):
    """Hand-written rules for the complaints recipe (name, address, email, question).

    Email by pattern; name after a cue (我叫, 姓名, 联系人, ...) or before （先生/女士）; address from a
    province name to the end of its clause (cut after 座/号/室, room and postcode kept); question: the sentence (its final mark kept) with the
    most Chinese characters left once those are taken out of the text.
    """

    name = "complaint-rules"
    kinds = ("extract",)

    def __init__(self, config: TaskConfig):
        super().__init__(config)
        if set(config.fields) != {"name", "address", "email", "question"}:
            raise ConfigError(
                f"eval.baselines: {self.name} answers the complaints fields name, address, email, question; "
                f"this task has fields {sorted(config.fields)}: remove it from eval.baselines"
            )
        self.fields = config.fields

    def answer(self, records: list[Record]) -> list[str]:
        return [json.dumps(self.extract(r.input), ensure_ascii=False) for r in records]

    def extract(self, text: str) -> dict[str, str]:
        """The four fields found in one complaint ('' where a rule finds nothing), in the task's field order."""
        found: dict[str, str] = {}
        taken: list[tuple[int, int]] = []
        if email := EMAIL.search(text):
            found["email"] = email.group()
            taken.append(email.span())
        if name := _NAME.search(text):
            found["name"] = name.group("cued") or name.group("titled")
            taken.append(name.span())
        if address := _address_span(text):
            found["address"] = text[address[0] : address[1]]
            taken.append(address)
        found["question"] = _longest_sentence(text, taken)
        return {field: found.get(field, "") for field in self.fields}


def _address_span(text: str) -> tuple[int, int] | None:
    """From the first province-level name to the end of its clause, cut after a building suffix if any, then
    any room number and postcode that follow."""
    province = _PROVINCE.search(text)
    if province is None:
        return None
    clause_end = _CLAUSE_END.search(text, province.end())
    stop = clause_end.start() if clause_end else len(text)
    building = _BUILDING.search(text, province.end(), stop)
    end = building.end() if building else stop
    while tail := _ADDRESS_TAIL.match(text, end):  # a room number, a postcode after a space
        end = tail.end()
    return province.start(), end


def _longest_sentence(text: str, taken: list[tuple[int, int]]) -> str:
    """The sentence (its final marks kept) with the most Chinese characters once the taken spans are replaced by
    sentence breaks."""
    for start, end in sorted(taken, reverse=True):
        text = text[:start] + "\n" + text[end:]
    sentences = [s.lstrip(_TRIM).rstrip() for s in _SENTENCE.findall(text)]
    return max(sentences, key=lambda s: len(_HAN.findall(s)), default="")

