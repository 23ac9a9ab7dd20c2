"""A web page as the text a reader sees: HTML bytes decoded, then rendered one line per block.

Every way a page comes in goes through here, so training, `predict` and `serve` show the model the same text:
an `html` column of a data file (`data.formats`), an .html/.htm file (`data.readers`) and the `html` of a
`POST /v1/extract` request (`serving.app`).

Decoding (`decode_html`): a byte-order mark, else the charset the page declares (`<meta charset>`,
`<meta http-equiv="Content-Type" content="...; charset=...">` or an XML declaration) when the bytes decode
with it, else UTF-8 when they are UTF-8 throughout, else GB18030 (a superset of GB2312 and GBK), else the
least damaged of those, else charset-normalizer's guess. Rendering (`page_text`): html-text, chosen by
measurement on 24 real Chinese pages (benchmarks/html_render.py, table in examples/policy-pages/README.md):
of the libraries compared it keeps the
most of the labelled main text as whole lines (a table cell's text stays together, where inscriptis lays
cells side by side), drops script and style, and is the fastest. It puts a space at inline element boundaries
(`第一段<b>粗</b>文字` reads `第一段 粗 文字`); training, predict and serve all see those same spaces.
"""

from __future__ import annotations

import codecs
import re

PAGE_SUFFIXES = (".html", ".htm")
_BOMS = ((codecs.BOM_UTF8, "utf-8-sig"), (codecs.BOM_UTF16_LE, "utf-16"), (codecs.BOM_UTF16_BE, "utf-16"))
_DECLARED = re.compile(rb"""<meta[^>]*?charset\s*=\s*["']?\s*([A-Za-z0-9_.:-]+)"""
                       rb"""|<\?xml[^>]*?encoding\s*=\s*["']([A-Za-z0-9_.:-]+)""", re.IGNORECASE)
_PRESCAN_BYTES = 8192  # far enough into the head for pages that declare their charset after long scripts
_CHINESE = {"gb2312": "gb18030", "gbk": "gb18030", "x-gbk": "gb18030", "cp936": "gb18030", "euc-cn": "gb18030"}
_SPACE_RUN = re.compile(r"[ \t]+")


def declared_charset(raw: bytes) -> str | None:
    """The Python codec of the charset the page declares near its start, or None (none, or one Python lacks).
    GB2312 and GBK are read as GB18030, their superset, as browsers do."""
    match = _DECLARED.search(raw[:_PRESCAN_BYTES])
    if match is None:
        return None
    label = (match.group(1) or match.group(2)).decode("ascii").lower()
    try:
        name = codecs.lookup(_CHINESE.get(label, label)).name
    except LookupError:
        return None
    return "utf-8" if name.startswith("utf-16") else name  # a page read as bytes that says UTF-16 is not (WHATWG)


def decode_html(raw: bytes) -> str:
    """The page's text: by its BOM, else the first of its declared charset, UTF-8 and GB18030 that decodes it
    whole; else the one of them that leaves the fewest bytes undecodable (replaced by U+FFFD) when that is under
    one in a thousand (a page cut off inside a character); else charset-normalizer's guess."""
    for bom, codec in _BOMS:
        if raw.startswith(bom):
            return raw.decode(codec, errors="replace")
    codecs_ = list(dict.fromkeys(c for c in (declared_charset(raw), "utf-8", "gb18030") if c))
    for codec in codecs_:
        try:
            return raw.decode(codec)
        except UnicodeDecodeError:
            continue
    text = min((raw.decode(codec, errors="replace") for codec in codecs_), key=lambda t: t.count("\ufffd"))
    if text.count("\ufffd") * 1000 < len(raw):
        return text
    from charset_normalizer import from_bytes  # installed with trafilatura; imported only for such a page

    best = from_bytes(raw).best()
    return text if best is None else str(best)


def page_text(page: str | bytes) -> str:
    """The visible text of an HTML page (text or bytes, see `decode_html`): one line per block, script, style
    and head (its title included) dropped, runs of spaces made one, each line trimmed, blank lines dropped."""
    import html_text

    html = decode_html(page) if isinstance(page, bytes) else page
    if not html.strip():
        return ""
    tree = html_text.parse_html(html)
    for head in tree.xpath("//head"):
        head.drop_tree()
    text = html_text.extract_text(tree)
    lines = (_SPACE_RUN.sub(" ", line).strip() for line in text.splitlines())
    return "\n".join(line for line in lines if line)

