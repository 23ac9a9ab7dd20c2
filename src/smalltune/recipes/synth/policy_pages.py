"""Synthetic crawled Chinese government policy pages: title, publish date and body from the page's visible text.

A page is drawn as structured facts (title, dates, document number, body paragraphs, attachments) and
rendered to HTML by one of several site layouts: navigation, breadcrumb, a metadata table, the article,
signature and date, attachment links, footer. The model input is the visible text of that same HTML
(`visible_text`), so text and HTML describe one page by construction; rule-based extractors
(trafilatura, GNE) read the HTML. The answer is

    {"title": ..., "publishtime": "YYYY-MM-DD", "content": ...}

with title and content copied verbatim from the visible text and the publish date normalised
(`tasks.text.normalise_date`). Test pages come from layouts and topics that never appear in training.
"""

from __future__ import annotations

import datetime as dt
import html
import random
import re
from dataclasses import dataclass
from html.parser import HTMLParser
from pathlib import Path

from faker import Faker

from smalltune.io import atomic_write_jsonl

_CN_DIGITS = "〇一二三四五六七八九"


def _cn_number(n: int) -> str:
    """1..31 in Chinese numerals as written in dates (十二, 二十, 三十一)."""
    tens, ones = divmod(n, 10)
    head = "" if tens == 0 else ("十" if tens == 1 else _CN_DIGITS[tens] + "十")
    return head + (_CN_DIGITS[ones] if ones else "") if n >= 10 else _CN_DIGITS[n]


def format_date(day: dt.datetime, style: str) -> str:
    """One of the ways policy sites write a date."""
    if style == "cn_numeral":
        year = "".join(_CN_DIGITS[int(c)] for c in str(day.year))
        return f"{year}年{_cn_number(day.month)}月{_cn_number(day.day)}日"
    return {
        "iso": f"{day:%Y-%m-%d}",
        "iso_minute": f"{day:%Y-%m-%d %H:%M}",
        "iso_second": f"{day:%Y-%m-%d %H:%M:%S}",
        "cn": f"{day.year}年{day.month}月{day.day}日",
        "cn_padded": f"{day:%Y年%m月%d日}",
        "slash": f"{day.year}/{day.month}/{day.day}",
        "slash_padded": f"{day:%Y/%m/%d}",
        "dot": f"{day:%Y.%m.%d}",
    }[style]


# --- what a page says -------------------------------------------------------------------------

PLACES = (
    ("重庆市", "渝"), ("北京市", "京"), ("上海市", "沪"), ("天津市", "津"), ("广东省", "粤"), ("江苏省", "苏"),
    ("浙江省", "浙"), ("山东省", "鲁"), ("四川省", "川"), ("湖北省", "鄂"), ("湖南省", "湘"), ("福建省", "闽"),
    ("安徽省", "皖"), ("河南省", "豫"), ("河北省", "冀"), ("陕西省", "陕"), ("江西省", "赣"), ("云南省", "云"),
    ("贵州省", "黔"), ("辽宁省", "辽"), ("吉林省", "吉"), ("山西省", "晋"), ("甘肃省", "甘"), ("海南省", "琼"),
)
# (office, document-number word); "厅" becomes "局" in the four municipalities
OFFICES = (
    ("人民政府", "府发"), ("人民政府办公厅", "府办发"), ("发展和改革委员会", "发改规"), ("财政厅", "财规"),
    ("人力资源和社会保障厅", "人社发"), ("住房和城乡建设厅", "建发"), ("农业农村厅", "农发"), ("生态环境厅", "环发"),
    ("商务厅", "商务发"), ("卫生健康委员会", "卫发"), ("科学技术厅", "科发"), ("交通运输厅", "交规"),
)
TRAIN_TOPICS = (
    "促进民营经济发展壮大", "推动大规模设备更新", "加强城市内涝治理", "城镇老旧小区改造", "持续优化营商环境",
    "数字政府建设", "农村人居环境整治", "生活垃圾分类", "促进消费扩容提质", "职业技能提升",
    "高校毕业生就业创业", "养老服务体系建设", "中小学课后服务", "新能源汽车推广应用", "历史文化街区保护",
    "安全生产专项整治", "医疗保障基金监管", "住房公积金缴存管理", "森林草原防灭火", "粮食安全责任制考核",
    "科技创新平台建设", "数据要素市场化配置", "低空经济发展", "夜间经济提质升级", "中医药传承创新",
    "生育支持政策落实",
)
TEST_TOPICS = (
    "河湖长制全面推行", "耕地保护和质量提升", "外贸稳规模优结构", "文化和旅游深度融合", "公共法律服务体系建设",
    "智慧交通建设", "社区嵌入式服务设施建设", "农作物秸秆综合利用", "非物质文化遗产保护传承", "地方政府专项债券管理",
)
TITLE_PATTERNS = (
    "{org}关于印发{place}{topic}实施方案的通知",
    "{org}关于进一步做好{topic}工作的通知",
    "{org}关于加快推进{topic}的实施意见",
    "{org}关于印发《{place}{topic}管理办法》的通知",
    "{org}关于印发{place}{topic}若干措施的通知",
    "{org}关于{topic}的指导意见",
    "{place}{topic}三年行动计划（{y1}—{y2}年）",
)
HEADINGS = ("总体要求", "主要目标", "重点任务", "主要举措", "支持政策", "保障措施", "组织实施", "工作要求")
SUBHEADINGS = (
    "强化组织领导", "加大资金支持", "完善工作机制", "强化要素保障", "推进试点示范", "加强督促检查",
    "优化服务流程", "强化科技支撑", "加强人才培养", "营造良好氛围", "健全标准体系", "压实属地责任",
)
SENTENCES = (
    "各地各部门要把{topic}摆在突出位置，建立健全工作机制，压实工作责任",
    "到{year}年，{topic}工作取得明显成效，重点指标达到{pct}%以上",
    "充分发挥财政资金引导作用，对符合条件的项目给予最高{num}万元补助",
    "加强部门协同，定期开展督导检查，及时发现和解决工作中遇到的问题",
    "建立{topic}工作台账，实行清单化管理、项目化推进、闭环式落实",
    "鼓励社会资本参与，探索政府和社会资本合作等多元化投入机制",
    "强化宣传引导，及时总结推广典型经验做法，营造全社会共同参与的良好氛围",
    "对工作成效明显的地区，在资金安排、项目申报等方面予以倾斜支持",
    "加快完善相关标准规范，推动{topic}规范化、标准化、智能化发展",
    "{dept}要会同有关部门制定具体实施细则，于{month}月底前报送{office}",
    "各级财政部门要统筹安排资金，保障{topic}各项工作顺利开展",
    "严格落实安全生产责任，坚决防范和遏制重特大事故发生",
    "建立健全考核评价制度，将{topic}纳入年度绩效考核内容",
    "支持有条件的地区先行先试，形成一批可复制可推广的经验",
    "加强数据共享和业务协同，推动政务服务“一网通办”“跨省通办”",
    "每年遴选{count}个左右示范项目，给予重点支持",
    "各牵头部门要细化工作措施，明确时间节点，确保各项任务落到实处",
    "加强信息公开，主动接受社会监督，及时回应群众关切",
    "完善容错纠错机制，激励干部担当作为、干事创业",
    "推动{topic}与乡村振兴、新型城镇化建设有机结合",
)
INTROS = (
    "为深入贯彻落实党中央、国务院关于{topic}的决策部署，进一步推动高质量发展，经{office}同意，现就有关事项通知如下",
    "为加快推进{topic}，切实解决群众急难愁盼问题，结合我{unit}实际，制定本方案",
    "现将《{place}{topic}实施方案》印发给你们，请结合实际认真贯彻执行",
    "为进一步做好{topic}工作，根据国家有关规定，结合本地实际，提出以下意见",
)
CLOSINGS = (
    "本通知自印发之日起施行，有效期{years}年",
    "本办法自{effective}起施行，由{office}负责解释",
    "各地在执行过程中遇到的问题，请及时向{office}反映",
)
DEPARTMENTS = ("市发展改革委", "市财政局", "省教育厅", "市住房城乡建设委", "省商务厅", "市经济信息委", "省农业农村厅")


@dataclass(frozen=True)
class Page:
    """The facts of one policy page, before any layout renders it."""

    site: str
    office: str
    abbr: str
    title: str
    document_number: str
    index_number: str
    theme: str
    published: dt.datetime
    written: dt.datetime
    paragraphs: tuple[str, ...]  # salutation first, then the body
    attachments: tuple[str, ...]
    views: int


MUNICIPALITIES = ("重庆市", "北京市", "上海市", "天津市")


def _office(place: str, office: str) -> str:
    """The office's full name; municipalities have bureaus (局) where provinces have departments (厅)."""
    bureau = place in MUNICIPALITIES and office.endswith("厅") and "办公" not in office
    return place + (office.replace("厅", "局") if bureau else office)


def _fill(template: str, rng: random.Random, **slots: str) -> str:
    values = {
        "year": str(rng.randint(2025, 2030)), "pct": str(rng.choice((60, 70, 80, 85, 90, 95))),
        "num": str(rng.choice((20, 50, 100, 200, 300, 500))), "month": str(rng.randint(1, 12)),
        "count": str(rng.randint(3, 30)), "dept": rng.choice(DEPARTMENTS), "years": str(rng.choice((2, 3, 5))),
        **slots,
    }
    return template.format(**values)


def _body(rng: random.Random, fake: Faker, target_chars: int, slots: dict[str, str]) -> tuple[str, ...]:
    """Intro, numbered sections of policy prose until about `target_chars`, closing and a contact line."""
    head = [_fill(rng.choice(INTROS), rng, **slots) + "。"]
    tail = [_fill(rng.choice(CLOSINGS), rng, **slots) + "。"]
    if rng.random() < 0.5:
        tail.append(f"联系人：{fake.name()}，联系电话：{fake.phone_number()}。")
    sections: list[str] = []
    left = target_chars - sum(map(len, head + tail))
    for index, (number, heading) in enumerate(zip("一二三四五六七八", rng.sample(HEADINGS, len(HEADINGS)))):
        sections.append(f"{number}、{heading}")
        for sub, subheading in zip("一二三四五六", rng.sample(SUBHEADINGS, 6)):
            sentences = rng.sample(SENTENCES, rng.randint(2, 4))
            sections.append(f"（{sub}）{subheading}。" + "；".join(_fill(s, rng, **slots) for s in sentences) + "。")
            missing = left - sum(map(len, sections))
            headings_left = len(HEADINGS) - index - 1
            if missing <= 0 or (rng.random() < 0.4 and missing < 250 * headings_left):  # a new section, if room
                break
        if missing <= 0:
            break
    return (*head, *sections, *tail)


def draw_page(rng: random.Random, fake: Faker, topics: tuple[str, ...], body_chars: tuple[int, int]) -> Page:
    """The facts of one page on one of `topics`, its body about body_chars[0]..body_chars[1] characters."""
    place, abbr = rng.choice(PLACES)
    office_name, number_word = rng.choice(OFFICES)
    office = _office(place, office_name)
    published = dt.datetime(2019, 1, 1, 8) + dt.timedelta(days=rng.randrange(7 * 365), minutes=rng.randrange(600))
    written = published - dt.timedelta(days=rng.randint(2, 20))
    topic = rng.choice(topics)
    title = rng.choice(TITLE_PATTERNS).format(
        org=office, place=place, topic=topic, y1=published.year, y2=published.year + 2)
    slots = {"topic": topic, "place": place, "office": office, "unit": place[-1],
             "effective": format_date(published + dt.timedelta(days=30), "cn")}
    salutation = ("各区县（自治县）人民政府，市政府各部门，有关单位：" if place in MUNICIPALITIES
                  else "各市（州）人民政府，省政府各部门，有关单位：")
    code = "".join(rng.choice("0123456789ABCDEFGHJKLMNPQRTUWXY") for _ in range(18))
    attachments = tuple(
        f"{place}{topic}{name}" for name in rng.sample(("重点任务分工表", "申报指南", "项目汇总表", "政策解读"), rng.randint(0, 2)))
    return Page(
        site=f"{place}人民政府", office=office, abbr=abbr, title=title,
        document_number=f"{abbr}{number_word}〔{written.year}〕{rng.randint(1, 120)}号",
        index_number=f"{code}/{published.year}-{rng.randint(1, 99999):05d}",
        theme=rng.choice(("综合政务", "国民经济管理", "城乡建设", "农业、林业、水利", "科技、教育", "卫生、体育", "商贸、海关、旅游")),
        published=published, written=written,
        paragraphs=(salutation, *_body(rng, fake, rng.randint(*body_chars), slots)),
        attachments=attachments, views=rng.randint(30, 99999),
    )


def content_of(page: Page) -> str:
    """The answer's content: the body paragraphs, one per line, as the visible text shows them."""
    return "\n".join(page.paragraphs)


# --- how a site shows it ----------------------------------------------------------------------


@dataclass(frozen=True)
class Layout:
    """One site's way of laying out a policy page.

    `order` lists the page's sections top to bottom: header, crumb, meta, title, info, docno, article,
    sign, attach, tools, related, footer; `article` lists those inside the article's container (always
    the body, often the signature and attachments too, as on real sites). `meta` labels are shown in the
    metadata table; `info` is the line under the title ({published}, {source}, {views}); dates use
    `format_date` styles.
    """

    name: str
    order: tuple[str, ...]
    article: tuple[str, ...]
    nav: tuple[str, ...]
    crumb: str
    crumb_path: tuple[str, ...]
    meta: tuple[str, ...]
    meta_tag: str
    info: str
    published_style: str
    written_style: str
    sign_style: str
    article_class: str
    title_tag: str
    attach_label: str
    tools: str
    footer: tuple[str, ...]
    head_meta: bool


_NAV_A = ("首页", "政务公开", "政务服务", "互动交流", "数据开放", "走进{place}")
_NAV_B = ("网站首页", "新闻中心", "信息公开", "办事服务", "政民互动", "专题专栏")
_NAV_C = ("首页", "机构概况", "政策法规", "通知公告", "工作动态", "在线服务", "公众参与")
_FOOT_A = ("主办：{site}办公厅　承办：{place}大数据应用发展管理局", "版权所有：{site}　网站标识码：{site_code}",
           "{abbr}ICP备{icp}号-1　{abbr}公网安备 {beian}号", "联系我们 | 网站地图 | 隐私声明 | 纠错")
_FOOT_B = ("Copyright © {year} {office} 版权所有", "地址：{place}{street}　邮编：{postcode}",
           "{abbr}ICP备{icp}号　{abbr}公网安备{beian}号", "建议使用1920×1080分辨率浏览本网站")
_FOOT_C = ("网站地图 | 联系我们 | 使用帮助", "{office}　主办", "备案号：{abbr}ICP备{icp}号　网站标识码：{site_code}")

LAYOUTS: dict[str, Layout] = {
    layout.name: layout
    for layout in (
        Layout("gov-table", ("header", "crumb", "meta", "title", "article", "tools", "footer"),
               ("docno", "body", "sign", "attach"),
               _NAV_A, "当前位置：", ("首页", "政务公开", "政策文件", "规范性文件"),
               ("索引号", "主题分类", "发布机构", "成文日期", "标题", "发文字号", "发布日期"), "table", "",
               "cn_padded", "cn_padded", "cn", "pages_content", "h1", "附件：", "【打印】【关闭】", _FOOT_A, True),
        Layout("city-portal", ("header", "crumb", "title", "info", "article", "attach", "footer"),
               ("docno", "body", "sign"),
               _NAV_B, "您现在的位置：", ("首页", "信息公开", "政府文件"), (), "table",
               "发布时间：{published}　来源：{source}　浏览次数：{views}", "iso_minute", "cn", "cn",
               "TRS_Editor", "h1", "附件：", "", _FOOT_B, True),
        Layout("dept-site", ("header", "crumb", "title", "info", "article", "sign", "attach", "tools", "footer"),
               ("body",),
               _NAV_C, "您现在的位置：", ("首页", "通知公告"), (), "table",
               "[ {published} ]　来源：{source}", "slash", "cn", "cn", "zoom", "div", "文件下载：",
               "分享到：微信 微博 QQ空间", _FOOT_C, False),
        Layout("open-list", ("header", "crumb", "meta", "title", "info", "article", "footer"),
               ("body", "sign", "attach"),
               _NAV_A, "当前位置：", ("首页", "政府信息公开", "法定主动公开内容", "政策文件"),
               ("索引号", "发布机构", "发文字号", "成文日期", "发布日期", "有效性"), "dl",
               "字号：大 中 小　打印本页", "iso", "iso", "cn", "article-content", "h2", "附件：", "", _FOOT_A, True),
        Layout("news-style", ("header", "title", "info", "article", "sign", "tools", "related", "footer"), ("body",),
               _NAV_B, "", (), (), "table", "{published}　来源：{source}", "cn", "cn", "cn", "news_content",
               "h1", "附件：", "【打印本页】【关闭窗口】", _FOOT_B, False),
        Layout("mobile", ("title", "info", "article", "footer"), ("docno", "body", "sign", "attach"),
               (), "", (), (), "table", "发布日期：{published}", "dot", "cn", "cn", "detail", "h3", "相关附件：", "",
               _FOOT_C, False),
        # held out: never in training
        Layout("library", ("header", "crumb", "meta", "title", "info", "article", "attach", "footer"), ("body", "sign"),
               _NAV_C, "位置：", ("首页", "政策", "文件库"), ("标题", "发文机关", "发文字号", "发布时间", "主题分类"),
               "table", "发布人：{source}　点击：{views}", "iso_second", "cn_numeral", "cn_numeral",
               "view TRS_UEDITOR", "h2", "相关附件：", "【打印】", _FOOT_C, True),
        Layout("meta-bottom", ("header", "crumb", "title", "info", "article", "meta", "footer"),
               ("body", "sign", "attach"),
               _NAV_A, "当前位置：", ("首页", "政务公开", "通知公告"), ("成文日期", "发布日期", "发文字号", "有效性"),
               "dl", "时间：{published}　来源：{source}", "slash_padded", "cn_padded", "cn", "wz_content", "h1",
               "文件下载：", "", _FOOT_B, False),
    )
}
TRAIN_LAYOUTS = ("gov-table", "city-portal", "dept-site", "open-list", "news-style", "mobile")
TEST_LAYOUTS = ("library", "meta-bottom")


def _meta_value(page: Page, layout: Layout, label: str) -> str:
    return {
        "索引号": page.index_number, "主题分类": page.theme, "发布机构": page.office, "发文机关": page.office,
        "成文日期": format_date(page.written, layout.written_style), "标题": page.title,
        "发文字号": page.document_number, "发布日期": format_date(page.published, layout.published_style),
        "发布时间": format_date(page.published, layout.published_style), "有效性": "有效",
    }[label]


def _section_html(page: Page, layout: Layout, section: str, extras: dict[str, str]) -> str:
    """One section of the page as HTML."""
    e = html.escape
    if section == "header":
        nav = "".join(f'<li><a href="/{i}/">{e(item.format(**extras))}</a></li>' for i, item in enumerate(layout.nav))
        return (f'<div class="header"><div class="topbar"><span>无障碍</span> <span>长者模式</span> <span>繁體</span>'
                f'<a href="/login">登录</a></div><div class="logo">{e(page.site)}</div>'
                f'<form class="search"><input type="text" placeholder="请输入关键字"><button>搜索</button></form>'
                f'<ul class="nav">{nav}</ul></div>')
    if section == "crumb":
        links = " &gt; ".join(f'<a href="/c{i}/">{e(p)}</a>' for i, p in enumerate(layout.crumb_path))
        return f'<div class="crumb">{e(layout.crumb)}{links} &gt; <span>正文</span></div>'
    if section == "meta":
        pairs = [(label, _meta_value(page, layout, label)) for label in layout.meta]
        if layout.meta_tag == "dl":
            items = "".join(f"<dt>{e(k)}：</dt><dd>{e(v)}</dd>" for k, v in pairs)
            return f'<dl class="xxgk-info">{items}</dl>'
        rows = "".join(
            "<tr>" + "".join(f"<th>{e(k)}：</th><td>{e(v)}</td>" for k, v in pairs[i:i + 2]) + "</tr>"
            for i in range(0, len(pairs), 2))
        return f'<table class="xxgk-table"><tbody>{rows}</tbody></table>'
    if section == "title":
        if layout.title_tag == "div":
            return f'<div class="article-title">{e(page.title)}</div>'
        return f'<{layout.title_tag} class="title">{e(page.title)}</{layout.title_tag}>'
    if section == "info":
        line = layout.info.format(published=format_date(page.published, layout.published_style),
                                  source=page.office, views=page.views)
        return f'<div class="info"><span>{e(line)}</span></div>'
    if section == "docno":
        return f'<p class="docno" style="text-align:center">{e(page.document_number)}</p>'
    if section == "article":
        inner = "".join(_section_html(page, layout, part, extras) for part in layout.article)
        return f'<div class="{layout.article_class}">{inner}</div>'
    if section == "body":
        return "".join(f'<p style="text-indent:2em">{e(p)}</p>' for p in page.paragraphs)
    if section == "sign":
        extra = '<p class="note">（此件公开发布）</p>' if page.views % 2 else ""
        return (f'<div class="sign" style="text-align:right"><p>{e(page.office)}</p>'
                f'<p>{e(format_date(page.written, layout.sign_style))}</p></div>{extra}')
    if section == "attach":
        if not page.attachments:
            return ""
        links = "".join(f'<p><a href="/files/{i}.docx">{i + 1}.{e(a)}.docx</a></p>' for i, a in enumerate(page.attachments))
        return f'<div class="attach"><p>{e(layout.attach_label)}</p>{links}</div>'
    if section == "tools":
        return f'<div class="tools">{e(layout.tools)}</div>' if layout.tools else ""
    if section == "related":
        return ('<div class="related"><h4>相关文章</h4><ul><li><a href="/r1">《'
                f'{e(page.title)}》政策解读</a></li><li><a href="/r2">{e(page.site)}常务会议召开</a></li></ul></div>')
    if section == "footer":
        return '<div class="footer">' + "".join(f"<p>{e(line.format(**extras))}</p>" for line in layout.footer) + "</div>"
    raise ValueError(f"unknown section {section!r}")


def render_html(page: Page, layout: Layout, rng: random.Random, fake: Faker) -> str:
    """The page as a crawled HTML document in the layout's style."""
    extras = {
        "place": page.site.removesuffix("人民政府"), "site": page.site, "office": page.office, "abbr": page.abbr,
        "site_code": str(rng.randint(10**9, 10**10 - 1)), "icp": f"{rng.randint(10**7, 10**8 - 1)}",
        "beian": str(rng.randint(10**13, 10**14 - 1)), "year": str(page.published.year),
        "street": f"{fake.street_name()}{rng.randint(1, 300)}号", "postcode": fake.postcode(),
    }
    head = f"<title>{html.escape(page.title)}_{html.escape(page.site)}</title>"
    if layout.head_meta:
        head += (f'<meta name="ArticleTitle" content="{html.escape(page.title)}">'
                 f'<meta name="PubDate" content="{format_date(page.published, "iso_minute")}">')
    body = "".join(_section_html(page, layout, section, extras) for section in layout.order)
    return f'<!DOCTYPE html><html lang="zh-CN"><head><meta charset="utf-8">{head}</head><body>{body}</body></html>'


_BLOCKS = {"p", "div", "h1", "h2", "h3", "h4", "h5", "h6", "li", "ul", "tr", "table", "tbody", "dl", "dt", "dd",
           "form", "section", "header", "footer", "nav", "br"}
_HIDDEN = {"head", "script", "style", "title"}


class _TextParser(HTMLParser):
    """Collects the text a browser shows: blocks on their own lines, hidden elements dropped."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self.hidden = 0

    def handle_starttag(self, tag: str, attrs: list) -> None:
        if tag in _HIDDEN:
            self.hidden += 1
        elif tag in _BLOCKS:
            self.parts.append("\n")
        elif tag in ("td", "th", "span", "a", "button"):
            self.parts.append(" ")

    def handle_endtag(self, tag: str) -> None:
        if tag in _HIDDEN:
            self.hidden -= 1
        elif tag in _BLOCKS:
            self.parts.append("\n")

    def handle_data(self, data: str) -> None:
        if not self.hidden:
            self.parts.append(data)


def visible_text(page_html: str) -> str:
    """The page's visible text: one line per block, spaces collapsed, blank lines dropped."""
    parser = _TextParser()
    parser.feed(page_html)
    parser.close()
    lines = (re.sub(r"[ \t]+", " ", line).strip() for line in "".join(parser.parts).split("\n"))
    return "\n".join(line for line in lines if line)


# --- data sets --------------------------------------------------------------------------------

DEMO_BODY_CHARS = (200, 500)


def _split(prefix: str, n: int, layouts: tuple[str, ...], topics: tuple[str, ...], body_chars: tuple[int, int],
           rng: random.Random, fake: Faker, seen: set[str]) -> list[dict]:
    """n records with unique visible texts, layouts taken in turn."""
    records: list[dict] = []
    while len(records) < n:
        layout = LAYOUTS[layouts[len(records) % len(layouts)]]
        page = draw_page(rng, fake, topics, body_chars)
        page_html = render_html(page, layout, rng, fake)
        text = visible_text(page_html)
        if text in seen:
            continue
        seen.add(text)
        output = {"title": page.title, "publishtime": page.published.date().isoformat(), "content": content_of(page)}
        records.append({"id": f"{prefix}-{len(records) + 1:04d}", "layout": layout.name, "input": text,
                        "output": output, "html": page_html})
    return records


def generate_pages(
    n_train: int = 80, n_test: int = 32, seed: int = 0, body_chars: tuple[int, int] = DEMO_BODY_CHARS
) -> tuple[list[dict], list[dict]]:
    """(train, test) records {id, layout, input, output, html}, deterministic for `seed`.

    Test pages use TEST_LAYOUTS and TEST_TOPICS only; body length is drawn from `body_chars`.
    """
    fake = Faker("zh_CN")
    fake.seed_instance(seed)
    rng = random.Random(seed)
    seen: set[str] = set()
    train = _split("train", n_train, TRAIN_LAYOUTS, TRAIN_TOPICS, body_chars, rng, fake, seen)
    test = _split("test", n_test, TEST_LAYOUTS, TEST_TOPICS, body_chars, rng, fake, seen)
    return train, test


def write_pages(out_dir: Path, n_train: int = 80, n_test: int = 32, seed: int = 0,
                body_chars: tuple[int, int] = DEMO_BODY_CHARS) -> tuple[Path, Path]:
    """Write out_dir/train.jsonl and out_dir/test.jsonl (alpaca records plus `layout` and `html`); return the paths."""
    paths = (Path(out_dir) / "train.jsonl", Path(out_dir) / "test.jsonl")
    for path, records in zip(paths, generate_pages(n_train, n_test, seed, body_chars)):
        atomic_write_jsonl(path, records)
    return paths
