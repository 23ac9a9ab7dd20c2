"""The 24 real labelled Chinese web pages of the shared data folder (web-pages/) as test records: never trained on.

Each record is {id, html, output}: the page's HTML (decoded by `data.html.decode_html`, the decoder every page goes
through), and its labels as the web-pages task reads them: `publishtime` the labelled date as YYYY-MM-DD, or null
where the label is UNKNOWN or no whole date (`2003-5`, a name), and `content` the labelled main text. A page whose
labelled text is not whole lines of its rendering (`tasks.lines.line_ranges` refuses it: 2 of the 24, labels cut
inside a line) cannot be answered by line reference and is left out of the written file.
"""

from __future__ import annotations

from pathlib import Path

from smalltune.data.html import decode_html, page_text
from smalltune.data.readers import read_objects
from smalltune.io import atomic_write_jsonl
from smalltune.recipes.synth.shared_data import shared_data_dir, shared_file
from smalltune.tasks.lines import input_lines, line_ranges
from smalltune.tasks.text import normalise_date

LABELS = "web-pages/labels.jsonl"
REAL_FILE = "real.jsonl"


def real_pages(data_dir: Path | None = None) -> list[dict]:
    """Every labelled page as a record {id, html, output: {publishtime, content}}, in the labels' order."""
    labels = shared_file(shared_data_dir(data_dir), LABELS)
    records = []
    for _, row in read_objects(labels):
        page = decode_html(shared_file(labels.parent, row["html"]).read_bytes())
        output = {"publishtime": normalise_date(row["date"]) or None, "content": row["content"]}
        records.append({"id": row["id"], "html": page, "output": output})
    return records


def answerable(record: dict) -> bool:
    """Whether the record's labelled content is whole lines of its page's visible text."""
    try:
        line_ranges(record["output"]["content"], input_lines(page_text(record["html"])))
    except ValueError:
        return False
    return True


def write_real_pages(out_dir: Path, data_dir: Path | None = None) -> Path:
    """Write out_dir/real.jsonl: the answerable real pages (`answerable`); returns its path."""
    path = Path(out_dir) / REAL_FILE
    atomic_write_jsonl(path, [record for record in real_pages(data_dir) if answerable(record)])
    return path
