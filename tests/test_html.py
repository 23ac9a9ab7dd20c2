"""Pages as input: HTML bytes decoded by their charset (or detected), rendered to visible text one line per block,
and read from an `html` column the same way whatever file holds it."""

from __future__ import annotations

import codecs

import pytest

from conftest import write_jsonl
from smalltune.config import DataConfig
from smalltune.data.html import decode_html, page_text
from smalltune.data.records import load_records

BODY = "国务院办公厅关于促进民营经济发展的若干意见：鼓励民间资本进入铁路、航空等领域。"
PAGE = ("<html><head><title>标题_网站</title><style>.nav{color:red}</style>"
        "<script>var tracker = '不应出现';</script></head><body>"
        "<ul class='nav'><li><a href='/'>首页</a></li><li><a href='/zw'>政务公开</a></li></ul>"
        "<h1>关于促进民营经济发展的若干意见</h1><div class='content'><p>各省、自治区、直辖市人民政府：</p>"
        f"<p>{BODY}</p><p>第二段：放宽市场准入。</p></div><script>document.write('广告')</script></body></html>")


def _page(charset_tag: str) -> str:
    return PAGE.replace("<head>", f"<head>{charset_tag}")


def test_the_visible_text_keeps_each_block_on_its_line_and_drops_script_style_and_head():
    lines = page_text(PAGE).splitlines()
    assert lines == ["首页", "政务公开", "关于促进民营经济发展的若干意见", "各省、自治区、直辖市人民政府：", BODY,
                     "第二段：放宽市场准入。"]


@pytest.mark.parametrize("codec, tag", [
    ("gbk", '<meta charset="gbk">'),
    ("gb2312", '<meta http-equiv="Content-Type" content="text/html; charset=gb2312">'),
    ("gb18030", "<meta charset=GB18030>"),
    ("utf-8", '<meta charset="UTF-8">'),
    ("utf-8", ""),                        # no charset: UTF-8 because the bytes are UTF-8 throughout
    ("gbk", ""),                          # no charset: GBK read as GB18030
    ("gb2312", ""),
    ("gbk", '<meta charset="utf-8">'),    # a page that declares UTF-8 but is GBK
    ("utf-8", '<meta charset="gbk">'),    # ... and the other way round: the declared charset fails, UTF-8 does not
])
def test_pages_decode_by_their_declared_charset_or_their_bytes(codec, tag):
    raw = _page(tag).encode(codec)
    assert BODY in decode_html(raw) and page_text(raw) == page_text(PAGE)


def test_a_bom_wins_and_a_page_cut_inside_a_character_still_decodes():
    assert page_text(codecs.BOM_UTF8 + PAGE.encode("utf-8")) == page_text(PAGE)
    assert page_text(codecs.BOM_UTF16_LE + PAGE.encode("utf-16-le")) == page_text(PAGE)
    cut = PAGE.encode("gbk") + "尾".encode("gbk")[:1] + b"<p>" + BODY.encode("gbk") * 20 + b"</p>"
    assert BODY in decode_html(cut)  # GB18030 with one byte replaced, not a wrong guess of another codec


def test_an_html_column_is_the_input_when_the_input_is_absent_and_errors_name_file_and_line(tmp_path):
    path = write_jsonl(tmp_path / "pages.jsonl", [
        {"id": "p1", "html": PAGE, "output": "x"},
        {"id": "p2", "input": "原文", "html": PAGE, "output": "x"},   # the input wins; the page stays in extra
        {"id": "p3", "html": 3, "output": "x"},
        {"id": "p4", "html": "<script>only()</script>", "output": "x"},
    ])
    for data in (DataConfig(train=path), DataConfig(train=path, format="columns")):
        loaded = load_records(path, data)
        records = {r.id: r for r in loaded.records}
        assert records["p1"].input == page_text(PAGE) and records["p1"].extra["html"] == PAGE
        assert records["p2"].input == "原文" and records["p2"].extra["html"] == PAGE
        assert [p.split(": ", 1) for p in loaded.problems] == [
            [f"{path}:3", "'html' must be the page's HTML as text, got int"],
            [f"{path}:4", "'html' has no visible text (an empty page, or only script and style)"]]


def test_an_html_file_is_one_record_named_by_the_file(tmp_path):
    page = tmp_path / "政策.html"
    page.write_bytes(_page('<meta charset="gbk">').encode("gbk"))
    (record,) = load_records(page, DataConfig(train=page), require_output=False).records
    assert (record.id, record.where, record.input) == ("政策.html", str(page), page_text(PAGE))
