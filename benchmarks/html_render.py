"""Which library renders a page's HTML to the text smalltune shows the model: measured on real pages.

Reads the 24 labelled Chinese pages of ../shared/data/web-pages (see its SOURCE.md; never copied into the
project), decodes each with `smalltune.data.html.decode_html`, renders it with each candidate and prints one
table row per renderer:

- content lines exact: the share of the labelled main text's characters whose line (each run of spaces as one)
  is a whole line of the rendered text; the labels keep the page's line breaks, so this is high only when each
  block of the page comes out on a line of its own, and its inline elements (b, a, span) without made-up spaces
- content lines, spaces ignored: the same, comparing lines without their spaces
- content found: the share whose line is found anywhere in the rendered text (joined lines included)
- code junk: the share of rendered characters on lines that are script or style source
- content share: the labelled characters over all rendered characters (the rest is navigation, footer, ...)
- ms/page: mean rendering time (decoding excluded), best of three passes

and then, for the decoders, how many pages decode with no replacement character and with every (non-ASCII)
character of the labelled text in them (mojibake fails both).

    python benchmarks/html_render.py [DATA_DIR]
"""

from __future__ import annotations

import html
import json
import re
import sys
import time
from collections.abc import Callable
from pathlib import Path

from smalltune.data.html import decode_html, page_text

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "web-pages"
_SPACES = re.compile(r"[\s\u3000\xa0]+")
_XML_DECLARATION = re.compile(r"^\s*<\?xml[^>]*\?>")  # lxml refuses text that declares its own encoding


def _norm(line: str) -> str:
    """A line without its spaces (renderers differ in the spaces they put at inline element boundaries)."""
    return _SPACES.sub("", line)


def _spaced(line: str) -> str:
    """A line with each run of spaces as one space, trimmed."""
    return _SPACES.sub(" ", line).strip()


def _inscriptis(html: str) -> str:
    from inscriptis import get_text

    return get_text(html)


def _inscriptis_strict(html: str) -> str:
    from inscriptis import get_text
    from inscriptis.css_profiles import CSS_PROFILES
    from inscriptis.model.config import ParserConfig

    return get_text(html, ParserConfig(css=CSS_PROFILES["strict"]))


def _html_text(html: str) -> str:
    import html_text

    return html_text.extract_text(html)


def _trafilatura_html2txt(html: str) -> str:
    import trafilatura

    return trafilatura.html2txt(html)


def _trafilatura_extract(html: str) -> str:
    import trafilatura

    return trafilatura.extract(html, favor_recall=True, include_comments=False, include_tables=True) or ""


def _html2text(html: str) -> str:
    import html2text

    converter = html2text.HTML2Text()
    converter.ignore_links = converter.ignore_images = True
    converter.body_width = 0
    return converter.handle(html)


def _lxml_text_content(html: str) -> str:
    import lxml.html

    return lxml.html.fromstring(html).text_content()


def _stdlib_parser(html: str) -> str:
    from smalltune.recipes.synth.policy_pages import visible_text

    return visible_text(html)


RENDERERS: dict[str, Callable[[str], str]] = {
    "smalltune page_text (html-text, head dropped, spaces tidied)": page_text,
    "inscriptis 2.7 get_text (relaxed CSS, its default)": _inscriptis,
    "inscriptis 2.7 get_text (strict CSS)": _inscriptis_strict,
    "html-text 0.7 extract_text": _html_text,
    "trafilatura 2.3 html2txt": _trafilatura_html2txt,
    "trafilatura 2.3 extract (favor_recall)": _trafilatura_extract,
    "html2text 2025.4 (Markdown)": _html2text,
    "lxml text_content()": _lxml_text_content,
    "stdlib HTMLParser (synth visible_text)": _stdlib_parser,
}


def _code_lines(html: str) -> set[str]:
    """The lines of the page's script and style elements (8 characters or more, spaces collapsed)."""
    import lxml.html

    tree = lxml.html.fromstring(html)
    source = "\n".join(node.text_content() for node in tree.xpath("//script|//style"))
    return {line for line in map(_norm, source.splitlines()) if len(line) >= 8}


def _scores(rendered: str, gold: str, code: set[str]) -> tuple[float, ...]:
    exact = {_spaced(line) for line in rendered.splitlines()}
    lines = [_norm(line) for line in rendered.splitlines()]
    whole, joined = set(lines), "".join(lines)
    gold_lines = [line for line in map(_norm, gold.splitlines()) if line]
    total = sum(map(len, gold_lines)) or 1
    as_is = sum(len(_norm(line)) for line in map(_spaced, gold.splitlines()) if line in exact) / total
    kept = sum(len(line) for line in gold_lines if line in whole) / total
    found = sum(len(line) for line in gold_lines if line in joined) / total
    chars = sum(map(len, lines)) or 1
    junk = sum(len(line) for line in lines if line in code) / chars
    return as_is, kept, found, junk, min(total / chars, 1.0)


def main(data: Path = DATA) -> None:
    labels = [json.loads(line) for line in (data / "labels.jsonl").read_text(encoding="utf-8").splitlines()]
    raws = [(data / row["html"]).read_bytes() for row in labels]
    pages = [_XML_DECLARATION.sub("", decode_html(raw)) for raw in raws]
    code = [_code_lines(page) for page in pages]
    print(f"{len(pages)} pages of {data}\n")
    print("| renderer | content lines exact | content lines, spaces ignored | content found | code junk | "
          "content share | ms/page |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for name, render in RENDERERS.items():
        try:
            render(pages[0])
        except ImportError:
            print(f"| {name} | not installed | | | | | |")
            continue
        best = float("inf")
        for _ in range(3):
            start = time.perf_counter()
            texts = [render(page) for page in pages]
            best = min(best, time.perf_counter() - start)
        rows = [_scores(text, row["content"], lines) for text, row, lines in zip(texts, labels, code)]
        means = [sum(column) / len(rows) for column in zip(*rows)]
        print(f"| {name} | {' | '.join(f'{mean:.3f}' for mean in means)} | {1000 * best / len(pages):.1f} |")
    _decoders(raws, labels)


def _decoders(raws: list[bytes], labels: list[dict]) -> None:
    """Pages decoded without U+FFFD, and holding every non-ASCII character of their labelled text, per decoder."""
    from charset_normalizer import from_bytes

    decoders: dict[str, Callable[[bytes], str]] = {
        "smalltune decode_html (BOM, declared, UTF-8, GB18030)": decode_html,
        "charset-normalizer best()": lambda raw: str(from_bytes(raw).best()),
        "UTF-8, errors replaced": lambda raw: raw.decode("utf-8", errors="replace"),
    }
    print(f"\n| decoder | pages without U+FFFD (of {len(raws)}) | pages holding every labelled character | ms/page |")
    print("|---|---:|---:|---:|")
    for name, decode in decoders.items():
        start = time.perf_counter()
        texts = [decode(raw) for raw in raws]
        took = (time.perf_counter() - start) / len(raws)
        clean = sum("\ufffd" not in text for text in texts)
        holding = sum({c for c in row["content"] if not c.isascii()} <= set(html.unescape(text))
                      for text, row in zip(texts, labels))
        print(f"| {name} | {clean} | {holding} | {1000 * took:.1f} |")


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else DATA)
