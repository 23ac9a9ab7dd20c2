"""Synthetic Chinese web pages as HTML (news, government, blog, forum): publish date and main text as whole lines.

A page is drawn as an `Article` (genre, title, date or none, main-text paragraphs, comments, related articles)
and rendered to HTML by one of several `Site` layouts, around it the navigation, link lists, related-article and
hot lists, comment sections or forum replies, pagination and footers real pages carry. The record keeps the
HTML only: its input is the page's visible text as `smalltune.data.html.page_text` renders it (the renderer of
training, predict and serve), and its gold content is the rendered lines the main text became, so it is whole
lines of the input by construction. The answer is

    {"publishtime": "YYYY-MM-DD" or null, "content": "<the main text's lines>"}

(the task file's `content` is `type: lines`: smalltune turns it into line ranges). Government pages reuse the
policy-page generator's bodies (`policy_pages.draw_page`); test pages come from site layouts and topics that
never appear in training. Generation is deterministic for a seed.
"""

from __future__ import annotations

import datetime as dt
import html
import math
import random
from dataclasses import dataclass
from pathlib import Path

from faker import Faker

from smalltune.data.html import page_text
from smalltune.io import atomic_write_jsonl
from smalltune.recipes.synth import policy_pages
from smalltune.recipes.synth.policy_pages import format_date
from smalltune.tasks.lines import input_lines, line_ranges, ranges_text

# --- what a page says -------------------------------------------------------------------------

TRAIN_TOPICS = {
    "news": ("新能源汽车销量", "城市更新改造", "高温天气", "春运客流", "电商直播", "乡村旅游", "芯片产业", "老旧小区加装电梯"),
    "gov": policy_pages.TRAIN_TOPICS,
    "blog": ("读书笔记", "跑步训练", "家常菜做法", "摄影入门", "Python学习", "育儿心得", "租房经历", "考研复习"),
    "forum": ("二手车选购", "装修预算", "笔记本电脑推荐", "宠物猫生病", "驾照考试", "基金定投", "钓鱼装备", "手机信号差"),
}
TEST_TOPICS = {
    "news": ("台风登陆", "冬奥会筹备", "地铁新线开通", "粮食丰收"),
    "gov": policy_pages.TEST_TOPICS,
    "blog": ("徒步旅行", "咖啡烘焙"),
    "forum": ("小区物业纠纷", "电动自行车上牌"),
}
SENTENCES = {
    "news": (
        "记者{month}月{day}日从{place}有关部门获悉，{topic}相关工作已全面展开",
        "据{org}统计，今年以来{place}{topic}同比增长{pct}%，增速居全省前列",
        "{person}介绍，下一步将继续加大投入，力争在{year}年底前完成全部任务",
        "不少市民表示，{topic}让日常生活更加便利，希望相关措施能够长期坚持下去",
        "业内人士分析认为，{topic}的背后是消费需求和产业结构的共同变化",
        "截至目前，全市已累计投入资金{num}亿元，惠及群众{num}万人",
        "在{place}的一处现场，工作人员正在紧张有序地开展作业，现场秩序井然",
        "{org}负责人表示，将密切关注{topic}的进展，及时发布相关信息",
        "专家提醒，公众应理性看待{topic}，不信谣、不传谣，以官方发布的信息为准",
        "据了解，这是{place}首次大规模开展此类工作，受到社会各界广泛关注",
    ),
    "blog": (
        "最近一直在琢磨{topic}这件事，今天终于有空把这段时间的体会写下来",
        "说实话，刚开始的时候我完全不知道从哪里下手，走了不少弯路",
        "后来在朋友{person}的推荐下，我换了一种方法，效果一下子好了很多",
        "这里要特别提醒一句：千万不要一开始就追求完美，先动手再说",
        "我把每天的进度都记在本子上，坚持了{num}天，回头看还挺有成就感的",
        "有人问我花了多少钱，其实前后加起来也就{num}百块左右，不算贵",
        "周末去了一趟{place}，顺便把{topic}的事情又实践了一遍",
        "如果你也对{topic}感兴趣，欢迎在评论区留言，我们一起交流",
        "当然，每个人的情况不一样，我的经验只能作为参考",
        "写到这里，窗外的天已经黑了，今天就先写这么多吧",
    ),
    "forum": (
        "各位大神好，想请教一下关于{topic}的问题，在线等，挺急的",
        "我的情况是这样的：{month}月份开始就发现不对劲，一直拖到现在",
        "预算大概{num}千元，在{place}这边，有没有懂行的朋友给点建议",
        "之前在网上查了不少资料，说法五花八门，看得我更糊涂了",
        "问了身边的朋友，有的说没问题，有的说最好换掉，实在拿不定主意",
        "补充一下：去年也遇到过类似的情况，当时找{org}处理过一次",
        "如果有亲身经历的麻烦说说具体怎么解决的，谢谢了",
        "先谢谢各位了，有结果了我会回来更新",
    ),
}
REPLIES = (
    "楼主说的情况我也遇到过，建议先去正规的地方看看", "顶一下，同问", "这个要看具体情况，不能一概而论",
    "支持楼主，写得很详细", "mark一下，回头再看", "我觉得还是别折腾了，省心最重要", "谢谢分享，学到了",
    "说得有道理，不过价格有点贵", "坐等后续", "我去年也是这样，后来换了就好了", "路过，帮顶", "哈哈，有同感",
)
SITE_SUFFIX = {"news": "新闻网", "gov": "人民政府", "blog": "博客", "forum": "论坛"}
HEADLINE_WORDS = ("发布", "启动", "召开", "通报", "回应", "解读", "盘点", "揭秘", "曝光", "推出")
NAV_WORDS = ("首页", "新闻", "国内", "国际", "财经", "科技", "体育", "娱乐", "汽车", "房产", "教育", "健康",
             "旅游", "文化", "专题", "图片", "视频", "评论", "社区", "博客", "论坛", "政务公开", "办事服务",
             "互动交流", "数据开放", "关于我们", "联系我们", "网站地图", "登录", "注册")


@dataclass(frozen=True)
class Comment:
    """A reader's comment or a forum reply."""

    user: str
    when: dt.datetime
    text: str


@dataclass(frozen=True)
class Article:
    """The facts of one page before any site lays it out."""

    genre: str
    site: str
    title: str
    published: dt.datetime | None  # None: the page shows no publish date
    source: str
    paragraphs: tuple[str, ...]
    comments: tuple[Comment, ...]
    related: tuple[tuple[str, dt.datetime], ...]  # other articles' titles and dates
    nav: tuple[str, ...]
    views: int


def _sentence(template: str, rng: random.Random, fake: Faker, topic: str) -> str:
    """The template with its slots filled: places, people and companies from Faker, numbers from `rng`."""
    return template.format(
        topic=topic, place=fake.city_name(), person=fake.name(), org=fake.company(), year=rng.randint(2005, 2026),
        month=rng.randint(1, 12), day=rng.randint(1, 28), pct=rng.randint(3, 60), num=rng.randint(2, 90))


def _paragraphs(genre: str, rng: random.Random, fake: Faker, topic: str, chars: int) -> tuple[str, ...]:
    """Paragraphs of 1-5 sentences of the genre's prose, about `chars` characters in all (at least one sentence)."""
    if genre == "gov":
        low = max(chars - 100, 60)
        return policy_pages.draw_page(rng, fake, (topic,), (low, low + 100)).paragraphs
    paragraphs: list[str] = []
    while not paragraphs or sum(map(len, paragraphs)) < chars:
        sentences = rng.sample(SENTENCES[genre], rng.randint(1, 4))
        paragraphs.append("，".join(_sentence(s, rng, fake, topic) for s in sentences) + rng.choice("。。。！"))
    return tuple(paragraphs)


def _headline(rng: random.Random, fake: Faker, topic: str) -> str:
    """A news headline on `topic`, as article lists show them."""
    return f"{fake.city_name()}{rng.choice(HEADLINE_WORDS)}{topic}{rng.choice(('新举措', '最新进展', '工作方案', '调查', '观察'))}"


def _reply(rng: random.Random, fake: Faker, topic: str) -> str:
    """A comment: one to three short replies, or now and then a sentence as long as the article's."""
    if rng.random() < 0.3:
        return _sentence(rng.choice(SENTENCES["blog"]), rng, fake, topic) + "。"
    return "，".join(rng.sample(REPLIES, rng.randint(1, 3))) + rng.choice("。！~")


def content_chars(rng: random.Random) -> int:
    """A main text's length as real pages have it: one page in six short (60-400 characters), the rest
    log-normal around 2,000 (half between 1,200 and 3,400, one in ten over 5,600)."""
    if rng.random() < 1 / 6:
        return rng.randint(60, 400)
    return int(math.exp(rng.gauss(math.log(2000), 0.8)))


def draw_article(rng: random.Random, fake: Faker, genre: str, topics: tuple[str, ...], chars: int) -> Article:
    """One page of `genre` on one of `topics`, its main text about `chars` characters."""
    topic = rng.choice(topics)
    published = dt.datetime(2003, 1, 1, 7) + dt.timedelta(days=rng.randrange(20 * 365), minutes=rng.randrange(900))
    later = [published + dt.timedelta(hours=rng.randint(1, 400)) for _ in range(rng.choice((0, 0, 3, 8, 20, 40)))]
    comments = tuple(Comment(fake.user_name() if rng.random() < 0.5 else fake.name(), when, _reply(rng, fake, topic))
                     for when in sorted(later))
    related = tuple((_headline(rng, fake, rng.choice(topics)), published - dt.timedelta(days=rng.randint(1, 90)))
                    for _ in range(rng.randint(16, 90)))
    title = {"news": lambda: _headline(rng, fake, topic), "gov": lambda: f"{fake.city_name()}关于{topic}的通知",
             "blog": lambda: f"{topic}：{rng.choice(('我的一点心得', '写在第一百天', '踩坑记录', '经验分享'))}",
             "forum": lambda: f"【求助】{topic}，{rng.choice(('大家怎么看', '该怎么办', '求推荐', '有懂的吗'))}？"}[genre]()
    return Article(
        genre=genre, site=fake.city_name() + SITE_SUFFIX[genre],
        title=title, published=published if rng.random() > 0.2 else None,
        source=fake.company() if genre in ("news", "gov") else fake.user_name(),
        paragraphs=_paragraphs(genre, rng, fake, topic, chars), comments=comments, related=related,
        nav=tuple(rng.choices(NAV_WORDS, k=rng.randint(12, 90))), views=rng.randint(10, 99999),
    )


# --- how a site shows it ----------------------------------------------------------------------


@dataclass(frozen=True)
class Site:
    """One site's layout: its sections top to bottom, and how it writes dates, the info line and the body.

    Sections: nav, crumb, title, info, body, editor, share, pager, related, hot, comments, footer. `info` is the
    line under (or after) the article in parts: {date} (its part left out when the page has none), {source} and
    {views}; `body` is "p" (a paragraph
    each), "br" (one block, paragraphs broken by <br>) or "td" (paragraphs in the cells of an old table layout).
    """

    name: str
    genre: str
    order: tuple[str, ...]
    info: tuple[str, ...]
    date_style: str
    body: str
    comment_head: str  # {n} {user} {when}
    comment_style: str
    footer: tuple[str, ...]


SITES: dict[str, Site] = {
    site.name: site
    for site in (
        Site("news-portal", "news", ("nav", "crumb", "title", "info", "body", "editor", "share", "related", "comments",
                                     "hot", "footer"),
             ("{date}", "来源：{source}", "浏览：{views}"), "iso_minute", "p", "{user} {when}", "iso_minute",
             ("关于我们 | 广告服务 | 联系方式 | 网站地图", "Copyright © 2003-{year} 版权所有 未经授权禁止转载", "京ICP证{icp}号")),
        Site("news-mobile", "news", ("title", "info", "body", "pager", "related", "footer"),
             ("{source}", "{date}"), "cn", "p", "", "cn", ("打开APP 阅读更多精彩内容", "{site} 版权所有")),
        Site("gov-portal", "gov", ("nav", "crumb", "title", "info", "body", "share", "related", "footer"),
             ("发布时间：{date}", "来源：{source}", "字号：大 中 小"), "cn_padded", "p", "", "cn",
             ("主办：{site}办公室", "网站标识码：{icp}　ICP备案：{icp}号", "联系我们 | 网站地图 | 隐私声明")),
        Site("blog-classic", "blog", ("nav", "title", "body", "info", "comments", "hot", "footer"),
             ("posted @ {date}", "{source}", "阅读({views})"), "iso_minute", "br", "# re: {title} {when} {user}", "iso_minute",
             ("Copyright © {source}", "Powered by: 博客园")),
        Site("tech-blog", "blog", ("nav", "title", "info", "body", "pager", "comments", "footer"),
             ("{source}", "发表于 {date}"), "slash", "p", "{n}楼 {user}", "slash", ("本博客所有文章版权归作者所有",)),
        Site("forum-bbs", "forum", ("nav", "crumb", "title", "info", "body", "comments", "pager", "footer"),
             ("楼主 {source}", "发表于 {date}"), "iso_second", "td", "{n}楼 {user} 发表于 {when}", "iso_second",
             ("Powered by Discuz! X3.4", "© 2001-{year} Comsenz Inc.", "小黑屋 | 手机版 | 联系我们")),
        # held out: never in training
        Site("news-local", "news", ("nav", "title", "info", "body", "editor", "hot", "related", "comments", "footer"),
             ("[{date}]", "作者：{source}", "点击数：{views}"), "dot", "td", "网友 {user} 于 {when} 评论", "dot",
             ("本站所有内容未经许可不得转载", "{site} 技术支持：{source}")),
        Site("forum-tieba", "forum", ("crumb", "title", "body", "info", "comments", "pager", "hot", "footer"),
             ("1楼", "{date}", "来自手机客户端"), "iso_minute", "br", "{user}", "iso_minute",
             ("©{year} 百度", "使用百度前必读 | 贴吧协议")),
    )
}
TRAIN_SITES = ("news-portal", "news-mobile", "gov-portal", "blog-classic", "tech-blog", "forum-bbs")
TEST_SITES = ("news-local", "forum-tieba")


def _info_line(article: Article, site: Site) -> str:
    """The article's info line; without a publish date, the part that would show it is left out."""
    date = format_date(article.published, site.date_style) if article.published else None
    parts = (part for part in site.info if date is not None or "{date}" not in part)
    return " ".join(parts).format(date=date, source=article.source, views=article.views)


def _body_html(article: Article, site: Site) -> str:
    e = html.escape
    if site.body == "br":
        return '<div class="postbody">' + "<br><br>".join(e(p) for p in article.paragraphs) + "</div>"
    if site.body == "td":
        rows = "".join(f"<tr><td>{e(p)}</td></tr>" for p in article.paragraphs)
        return f'<table class="content"><tbody>{rows}</tbody></table>'
    return '<div class="article">' + "".join(f"<p>{e(p)}</p>" for p in article.paragraphs) + "</div>"


def _section_html(article: Article, site: Site, section: str, rng: random.Random, fake: Faker) -> str:
    """One section of the page as HTML."""
    e = html.escape
    if section == "nav":
        return '<ul class="nav">' + "".join(f'<li><a href="/{i}">{e(w)}</a></li>' for i, w in enumerate(article.nav)) + "</ul>"
    if section == "crumb":
        return f'<div class="crumb">当前位置：<a href="/">首页</a> &gt; <a href="/l">{e(article.nav[1])}</a> &gt; 正文</div>'
    if section == "title":
        return f"<h1>{e(article.title)}</h1>"
    if section == "info":
        return f'<div class="info">{e(_info_line(article, site))}</div>'
    if section == "body":
        return _body_html(article, site)
    if section == "editor":
        return f'<p class="editor">（责任编辑：{e(fake.name())}）</p>'
    if section == "share":
        return '<div class="share">分享到： <a>微信</a> <a>微博</a> <a>QQ空间</a> 【打印】【关闭】</div>'
    if section == "pager":
        first, second = article.related[0][0], article.related[-1][0]
        return f'<div class="pager"><p>上一篇：<a href="/p">{e(first)}</a></p><p>下一篇：<a href="/n">{e(second)}</a></p>' \
               '<p>首页 上一页 <a>1</a> <a>2</a> <a>3</a> 下一页 尾页</p></div>'
    if section in ("related", "hot"):
        heading = "相关阅读" if section == "related" else rng.choice(("热门排行", "猜你喜欢", "推荐阅读", "最新文章"))
        half = len(article.related) // 2
        items = article.related[:half] if section == "related" else article.related[half:]
        style = site.comment_style
        lines = "".join(f'<li><a href="/a{i}">{e(t)}</a> <span>{e(format_date(d, style))}</span></li>'
                        if section == "related" else f'<li>{i + 1} <a href="/h{i}">{e(t)}</a></li>'
                        for i, (t, d) in enumerate(items))
        return f'<div class="{section}"><h3>{heading}</h3><ul>{lines}</ul></div>'
    if section == "comments":
        if not article.comments:
            return '<div class="comments"><h3>评论</h3><p>暂无评论，快来抢沙发吧！</p></div>' if site.comment_head else ""
        items = "".join(
            f'<div class="reply"><div class="head">{e(site.comment_head.format(n=n, user=c.user, title=article.title, when=format_date(c.when, site.comment_style)))}'
            f'</div><div class="text">{e(c.text)}</div></div>'
            for n, c in enumerate(article.comments, start=2))
        heading = "全部回复" if article.genre == "forum" else "网友评论"
        return f'<div class="comments"><h3>{heading}（{len(article.comments)}）</h3>{items}</div>'
    if section == "footer":
        year = (article.published or dt.datetime(2022, 1, 1)).year + 1
        lines = (line.format(year=year, site=article.site, source=article.source, icp=rng.randint(10**7, 10**8 - 1))
                 for line in site.footer)
        return '<div class="footer">' + "".join(f"<p>{e(line)}</p>" for line in lines) + "</div>"
    raise ValueError(f"unknown section {section!r}")


def render_html(article: Article, site: Site, rng: random.Random, fake: Faker) -> str:
    """The page as a crawled HTML document in the site's layout (its <title> and scripts are not visible text)."""
    body = "".join(_section_html(article, site, section, rng, fake) for section in site.order)
    return (f'<!DOCTYPE html><html lang="zh-CN"><head><meta charset="utf-8"><title>{html.escape(article.title)}_'
            f'{html.escape(article.site)}</title><script>var _hmt = _hmt || [];</script></head><body>{body}</body></html>')


def page_record(article: Article, page_html: str) -> dict:
    """The labels of a rendered page: its publish date, and as content the rendered lines its paragraphs became."""
    lines = input_lines(page_text(page_html))
    content = ranges_text(line_ranges("\n".join(article.paragraphs), lines), lines)
    date = article.published.date().isoformat() if article.published else None
    return {"publishtime": date, "content": content}


# --- data sets --------------------------------------------------------------------------------

DEMO_MAX_VISIBLE = 6000  # the demo's training and test pages: visible text up to this many characters


def _split(prefix: str, n: int, sites: tuple[str, ...], topics: dict[str, tuple[str, ...]], max_visible: int | None,
           rng: random.Random, fake: Faker) -> list[dict]:
    """n records, sites taken in turn; a page whose visible text is over `max_visible` is drawn again."""
    records: list[dict] = []
    while len(records) < n:
        site = SITES[sites[len(records) % len(sites)]]
        chars = content_chars(rng) if max_visible is None else min(content_chars(rng), max_visible * 2 // 3)
        article = draw_article(rng, fake, site.genre, topics[site.genre], chars)
        page_html = render_html(article, site, rng, fake)
        if max_visible is not None and len(page_text(page_html)) > max_visible:
            continue
        records.append({"id": f"{prefix}-{len(records) + 1:04d}", "layout": site.name, "genre": site.genre,
                        "html": page_html, "output": page_record(article, page_html)})
    return records


def generate_web_pages(n_train: int, n_test: int, seed: int = 0,
                       max_visible: int | None = DEMO_MAX_VISIBLE) -> tuple[list[dict], list[dict]]:
    """(train, test) records {id, layout, genre, html, output}, deterministic for `seed`. Test pages use
    TEST_SITES and TEST_TOPICS only; `max_visible` None leaves page lengths as real pages have them."""
    fake = Faker("zh_CN")
    fake.seed_instance(seed)
    rng = random.Random(seed)
    return (_split("train", n_train, TRAIN_SITES, TRAIN_TOPICS, max_visible, rng, fake),
            _split("test", n_test, TEST_SITES, TEST_TOPICS, max_visible, rng, fake))


def write_web_pages(out_dir: Path, n_train: int, n_test: int, seed: int = 0,
                    max_visible: int | None = DEMO_MAX_VISIBLE) -> tuple[Path, Path]:
    """Write out_dir/train.jsonl and out_dir/test.jsonl (alpaca rows: the page in `html`, no `input`)."""
    paths = (Path(out_dir) / "train.jsonl", Path(out_dir) / "test.jsonl")
    for path, records in zip(paths, generate_web_pages(n_train, n_test, seed, max_visible)):
        atomic_write_jsonl(path, records)
    return paths
