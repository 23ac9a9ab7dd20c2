"""Synthetic Chinese customer-complaint information-extraction data set.

Each record pairs a noisy complaint text with the JSON fields ``name``, ``address``, ``email`` and ``question``;
every field value is an exact substring of the text, occurring once. ``question`` follows the seed's labelling:
the complaint as written, from its first clause to its final punctuation mark, all of its clauses (one to four,
sometimes two sentences) included; greetings, thanks, sign-offs, ticket and phone numbers around it are not part
of it, nor is keyboard junk typed after its final mark. Addresses keep their postcode and room number where the
text gives them; about one record in eight is written in traditional characters (a Taiwanese name and address,
the rest converted by OpenCC). Train and test records are built from two disjoint pools of sentence templates,
complaint topics, feelings and noise patterns, so the test split measures new wordings rather than memorised ones.
"""

from __future__ import annotations

import functools
import random
import re
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

from faker import Faker

from smalltune.io import atomic_write_jsonl

FIELDS: dict[str, str] = {
    "name": "投诉人姓名",
    "address": "投诉人地址",
    "email": "投诉人邮箱",
    "question": "投诉的内容，原文照录（含结尾标点）",
}

TRADITIONAL_SHARE = 0.12
JUNK_SHARE = 0.12
JUNK_CHARS = "阿萨德看见啊啥的健康仨都会撒娇到谎插件了太法师打发是发送个好久快乐自行车从不能吗去玩儿额外人他有哦怕"


class Pool(NamedTuple):
    """Wordings one split is built from.

    Skeleton slots: G greeting, N/A/E introduced name/address/email, Q the question (its own final mark
    included, after an optional label such as 投诉内容：), X mid-text noise sentence, C closing, s a separator
    drawn once per record. A question is one to three clauses of one topic, maybe a feeling clause after them,
    joined by one of `joins` and closed by one of `enders`; a question of two sentences breaks at one of `breaks`.
    """

    skeletons: tuple[str, ...]
    greetings: tuple[str, ...]
    closings: tuple[str, ...]
    name_intros: tuple[str, ...]
    address_intros: tuple[str, ...]
    email_intros: tuple[str, ...]
    question_intros: tuple[str, ...]
    topics: tuple[tuple[str, tuple[str, ...]], ...]
    feelings: tuple[str, ...]
    enders: tuple[str, ...]
    noise_mid: tuple[str, ...]
    noise_tail: tuple[str, ...]
    separators: tuple[str, ...] = ("，",)
    joins: tuple[str, ...] = ("，",)
    breaks: tuple[str, ...] = ("。", "！")

    @property
    def templates(self) -> tuple[str, ...]:
        """All wordings that introduce fields or glue the text together."""
        return (self.skeletons + self.greetings + self.closings + self.name_intros
                + self.address_intros + self.email_intros + self.question_intros)

    @property
    def problems(self) -> tuple[str, ...]:
        """All problem clauses, flattened over topics, and the feeling clauses."""
        return tuple(s for _, sentences in self.topics for s in sentences) + self.feelings

    @property
    def noise(self) -> tuple[str, ...]:
        """All noise patterns."""
        return self.noise_mid + self.noise_tail


TRAIN_POOL = Pool(
    skeletons=(
        "{G}{N}{s}{A}{s}{E}。{X}{Q}{C}",
        "{G}{Q}{N}{s}{A}。{X}{E}",
        "{N}。{A}。{X}{Q}{E}。{C}",
        "{G}{X}{Q}{N}{s}{E}{s}{A}。{C}",
        "{G}{N}\n{A}\n{E}\n{X}{Q}",
        "{Q}{N}{s}{A}{s}{E}。{X}{C}",
        "{G}{A}{s}{N}。{Q}{X}{E}。",
        "{G}{E}{s}{N}。{X}{Q}{A}。{C}",
        "{N}{s}{E}。{Q}{A}。{X}{C}",
        "{G}{N}{s}{A}。\n{Q}\n{E}",
        "{G}{X}{N}{s}{A}。{Q}{E}。{C}",
        "{G}{A}。{E}。{N}。{X}{Q}",
        "{G}{X}{Q}\n{A}{s}{E}{s}{N}",
        "{E}{s}{A}{s}{N}。{Q}{X}{C}",
        "{N}\n{A}\n{E}\n{Q}",
        "客服：您好，请讲。\n用户：{G}{Q}\n客服：请问怎么称呼？住在哪里？\n用户：{N}{s}{A}。\n客服：方便留个邮箱吗？\n用户：{E}。{C}",
    ),
    separators=("，", "；", "、", " ", "，\n"),
    joins=("，", "，", "；"),
    greetings=("您好！", "你好。", "尊敬的客服：\n", "客服你好！", "领导好。", "打扰了。"),
    closings=("请尽快处理，谢谢。", "希望早日解决！", "盼复。", "麻烦尽快给个答复。", "谢谢！", "此致\n敬礼", "辛苦了。",
              "——一位老用户"),
    name_intros=("我叫{}", "本人{}", "联系人：{}", "{}（先生）反映", "姓名{}", "我是业主{}", "投诉人：{}",
                 "反映人：{}", "落款 {}", "客户姓名：{}", "{}（业主）", "称呼：{}", "来信人 {}", "户主{}",
                 "签名：{}", "Name: {}"),
    address_intros=("住在{}", "家庭住址：{}", "地址是{}", "我家位于{}", "住址{}", "小区地址：{}", "通讯地址：{}",
                    "居住在{}", "我住{}", "收件地址：{}", "家在{}", "户籍地址 {}", "位置：{}", "Address: {}"),
    email_intros=("邮箱{}", "电子邮件：{}", "email: {}", "联系邮箱：{}", "邮件请发{}", "E-mail：{}", "邮箱地址：{}",
                  "可以发邮件到{}", "电子信箱 {}", "回信请寄{}", "邮箱号：{}", "联系方式（邮箱）{}", "MAIL：{}"),
    question_intros=("投诉内容：", "反映问题：", "具体情况：", "问题描述：", "诉求："),
    topics=(
        ("宽带", ("家里宽带最近一周每天晚上都断网", "宽带测速只有十几兆远低于办理的三百兆套餐",
                "宽带师傅预约了三次都没有上门安装", "光猫的光信号灯一直闪红色无法上网",
                "宽带到期后没有通知就被自动续费了", "我家的宽带账号被别人盗用了")),
        ("手机信号", ("小区里手机信号特别差经常打不通电话", "家里4G信号只有一格连视频都看不了",
                  "地下室完全没有手机信号", "最近打电话经常自动掉线", "手机在室内一直显示无服务", "我们小区的基站拆了以后信号一直很差")),
        ("话费账单", ("本月话费账单里多扣了二十元的增值业务费", "我没有订购任何会员却每月被扣费",
                  "话费明细里出现了我从没拨打过的长途电话", "套餐降档申请提交了一个月还没生效",
                  "缴费后余额一直没有到账", "我的话费余额莫名其妙少了五十元")),
        ("水压", ("家里水压太低了楼上几乎放不出水", "每天早上用水高峰时水龙头只有细细一股水",
                "热水器因为水压不足根本打不着火", "高层住户经常没水可用",
                "二次供水泵房的水泵坏了好几天没人修", "我们楼的水压一到晚上就上不去")),
        ("水质", ("自来水放出来是黄色的还有一股铁锈味", "水里有很多白色的悬浮物",
                "烧开水后壶底结了厚厚一层水垢", "自来水有很重的消毒水味道",
                "水表走得特别快这个月水费翻了一倍", "我家的自来水有一股很重的泥腥味")),
        ("电压电费", ("家里电压不稳灯泡一直忽明忽暗", "晚上电压太低空调启动不了",
                  "电压波动烧坏了我家的冰箱", "电表读数和实际用电量对不上",
                  "电费账单突然比上个月高出三倍", "我们单元的电表箱经常冒火花")),
        ("燃气计费", ("燃气表显示的读数比实际用量多很多", "燃气卡充值后表里没有到账",
                  "抄表员从来不上门全是估抄", "燃气预存款被莫名其妙扣光了",
                  "燃气灶点火后火苗很小一直是黄色的", "我的燃气账户被多收了一个月的费用")),
        ("物业保洁", ("楼道里的垃圾好几天没人清理", "物业费每年都涨服务却越来越差",
                  "小区绿化带被人私自种菜物业不管", "楼道的声控灯坏了半个月没人修",
                  "物业保安晚上经常不在岗", "我们楼下的垃圾桶满了也没人清")),
    ),
    feelings=("简直无法忍受", "严重影响了我们的正常生活", "我已经反映过好多次了", "这已经不是第一次了",
              "真是太让人失望了", "希望你们认真对待"),
    # a complaint's own run of marks is part of it: runs here, other runs in the test pool
    enders=("。", "。", "。", "。", "！", "！", "！", "？", "？", "！！", "。。", "？？", "……"),
    # an ellipsis inside a question: the tokenizer's one `。。。` token is then copied in training answers too
    breaks=("。", "！", "。。。"),
    noise_mid=("联系电话{phone}。", "工单号：GD{num}。", "{y}年{m}月{d}日已经打过客服热线。",
               "麻烦您了。", "订单号{num}。", "备用手机{phone}。", "附件：现场照片3张。"),
    noise_tail=("——来自掌上营业厅客户端", "[自动回复]", "以上。", "（短信转写）",
                "\n--\n发自我的iPhone", "#%&*", "【转发】"),
)

TEST_POOL = Pool(
    skeletons=(
        "{G}{N}；{A}；{E}。{X}{Q}{C}",
        "{G}{Q}{X}{N}；{E}；{A}。",
        "【{N}】{A}；{E}\n{X}{Q}{C}",
        "{G}{E}；{A}。{Q}{X}{N}。{C}",
        "{N} | {A} | {E}\n{X}{Q}",
        "{G}{X}{Q}{A}；{N}；{E}。{C}",
        "{G}{A}；{N}\n{Q}\n{E}",
        "{Q}{N}，{E}。{X}{A}。{C}",
        "{G}{N}；{E}。\n{X}{Q}\n{A}",
        "{E} / {N}\n{A}\n{X}{Q}{C}",
        "{G}{A}。{X}{Q}{N}；{E}。",
        "{G}{N}。{Q}{X}{E}；{A}。{C}",
        "{N} | {A} | {E} | {Q}",
        "坐席：这里是客服中心，请问您要反映什么？\n来电人：{Q}\n坐席：请提供您的姓名、地址和邮箱。\n来电人：{N}，{A}，{E}。{C}",
    ),
    joins=("，", "；"),
    greetings=("贵单位好！", "各位工作人员好。", "致相关部门：\n", "您好，打扰一下。", "早上好！", "客服小姐姐好！"),
    closings=("望贵单位重视。", "等你们的回复！", "烦请核实处理。", "感谢！", "多谢。", "在此先行谢过！"),
    name_intros=("鄙人{}", "我的名字是{}", "联系人姓名：{}", "{}（女士）来电", "署名：{}", "用户{}", "报事人 {}"),
    address_intros=("现居{}", "详细地址：{}", "家住{}", "房屋坐落于{}", "所在地址 {}", "居住地：{}"),
    email_intros=("Email地址：{}", "邮件地址 {}", "mail:{}", "回复请发至{}", "电邮：{}", "我的邮箱是{}"),
    question_intros=("事由：", "内容 ", "问题：", "情况说明："),
    topics=(
        ("停电", ("小区今天凌晨突然停电到现在还没恢复", "这个月已经无故停电四次了", "停电前没有收到任何通知",
                "家里冰箱里的东西因为长时间停电全坏了", "只有我们这栋楼经常跳闸断电")),
        ("燃气异味", ("厨房里一直能闻到很浓的煤气味", "楼道里有燃气泄漏的味道很担心安全",
                  "燃气管道接口处有嘶嘶的漏气声", "报修燃气泄漏后维修人员三个小时才到",
                  "燃气报警器半夜一直在响")),
        ("电梯", ("电梯经常停在两层楼中间把人困住", "电梯运行时有很大的异响和晃动",
                "我们单元的电梯停运一个多月了还没修好", "电梯年检合格证已经过期了", "电梯按钮失灵按了没有反应")),
        ("停车", ("小区车位被外来车辆长期占用", "物业擅自把停车费从每月一百涨到三百",
                "地下车库的照明灯大部分都不亮", "我的车位被别人装了地锁", "消防通道上停满了车没人管")),
        ("停水", ("小区停水两天了也没有发通知", "楼下的自来水管爆裂了水漫进了车库",
                "停水后恢复供水时水一直很浑浊", "供水公司说好中午恢复供水结果拖到晚上",
                "水管冬天冻裂了报修一直没人来")),
        ("号码业务", ("申请携号转网一直提示不符合条件", "营业厅工作人员私自给我更改了套餐",
                  "销户的时候被要求先交一笔违约金", "客服承诺的话费返还一直没有到账", "我的号码被莫名其妙停机了")),
        ("噪音", ("楼上装修每天早上七点就开始打电钻", "小区里的变压器嗡嗡响晚上根本睡不着",
                "广场舞音响声音太大一直到晚上十点", "楼下餐馆的排风扇噪音特别大", "半夜总有货车在小区里装卸货")),
        ("流量", ("这个月流量明明没用完却被收了超额费用", "手机流量网速慢得打不开网页",
                "国际漫游流量包开通后没有生效", "流量提醒短信一条都没收到就欠费了",
                "定向流量包里的应用也被算作通用流量")),
    ),
    feelings=("实在让人忍无可忍", "给生活带来了极大不便", "这都第三次投诉了", "老人孩子都受不了", "你们到底管不管"),
    enders=("。", "！", "！！！", "？", "。。。"),
    noise_mid=("回拨号码 {phone}。", "受理编号#{num}。", "{y}-{m:02d}-{d:02d}来电反映过一次。",
               "辛苦各位师傅了！", "事件单号 WO{num}。"),
    noise_tail=("——发送自微信小程序", "【系统自动回复，请勿直接回复】", "完毕。", "【已读】",
                "\n————————\n此邮件由客户服务平台自动生成", "~~~///", "（未完待续）"),
)

_OTHER_DOMAINS = ("qq.com", "163.com", "126.com", "foxmail.com", "sina.com")
_POSTCODE = re.compile(r"\s*(\d{6})$")


class Fakers(NamedTuple):
    """Where one split's names, addresses and emails come from: mainland records and traditional-script ones."""

    simplified: Faker
    traditional: Faker


@functools.cache
def to_traditional() -> Callable[[str], str]:
    """OpenCC's simplified-to-traditional conversion."""
    import opencc

    return opencc.OpenCC("s2t").convert


def _email(fake: Faker, rng: random.Random) -> str:
    """A faker email, occasionally moved to a common Chinese mail domain."""
    email = fake.email(safe=False)
    if rng.random() < 0.25:
        return f"{email.split('@')[0]}@{rng.choice(_OTHER_DOMAINS)}"
    return email


def _address(fake: Faker, rng: random.Random) -> str:
    """A faker address; a mainland one gains a room number now and then and keeps its postcode half the time."""
    address = fake.address()
    postcode = _POSTCODE.search(address)
    if postcode is None:  # a Taiwanese address: postcode first, floor included
        return address
    street = address[: postcode.start()]
    if rng.random() < 0.3:
        street += f"{rng.randint(1, 6)}单元{rng.randint(1, 32)}{rng.randint(1, 4):02d}室"
    return f"{street} {postcode[1]}" if rng.random() < 0.5 else street


def _maybe(rng: random.Random, options: tuple[str, ...], p: float) -> str:
    """One of ``options`` with probability ``p``, else the empty string."""
    return rng.choice(options) if rng.random() < p else ""


def _noise(pattern: str, fake: Faker, rng: random.Random) -> str:
    """Fill a noise pattern with a phone number, a ticket number and a date."""
    return pattern.format(phone=fake.phone_number(), num=rng.randrange(10**7, 10**11),
                          y=rng.randint(2021, 2024), m=rng.randint(1, 12), d=rng.randint(1, 28))


def _question(pool: Pool, rng: random.Random) -> str:
    """One to four clauses of one topic (a feeling clause maybe last), now and then as two sentences."""
    clauses = rng.sample(rng.choice(pool.topics)[1], rng.choices((1, 2, 3), weights=(4, 4, 2))[0])
    if rng.random() < 0.35:
        clauses.append(rng.choice(pool.feelings))
    join = rng.choice(pool.joins)
    if len(clauses) > 1 and rng.random() < 0.3:
        cut = rng.randint(1, len(clauses) - 1)
        return join.join(clauses[:cut]) + rng.choice(pool.breaks) + join.join(clauses[cut:]) + rng.choice(pool.enders)
    return join.join(clauses) + rng.choice(pool.enders)


def _junk(rng: random.Random) -> str:
    """Keyboard junk typed after the complaint, as in the seed's second example."""
    return "".join(rng.choices(JUNK_CHARS, k=rng.randint(8, 20))) + rng.choice(("", "、", "，"))


def _record(pool: Pool, fakers: Fakers, rng: random.Random) -> tuple[str, dict[str, str]]:
    """Draw one complaint text and its extraction target."""
    traditional = rng.random() < TRADITIONAL_SHARE
    fake = fakers.traditional if traditional else fakers.simplified
    script = to_traditional() if traditional else str
    output = {
        "name": fake.name(),
        "address": _address(fake, rng),
        "email": _email(fake, rng),
        "question": script(_question(pool, rng)),
    }
    slots = {
        "G": script(_maybe(rng, pool.greetings, 0.6)),
        "N": script(rng.choice(pool.name_intros)).format(output["name"]),
        "A": script(rng.choice(pool.address_intros)).format(output["address"]),
        "E": script(rng.choice(pool.email_intros)).format(output["email"]),
        "Q": script(_maybe(rng, pool.question_intros, 0.25)) + output["question"],
        "X": script(_noise(_maybe(rng, pool.noise_mid, 0.6), fake, rng)),
        "C": script(_maybe(rng, pool.closings, 0.5)),
        "s": rng.choice(pool.separators),
    }
    text = script(rng.choice(pool.skeletons)).format(**slots)
    text += script(_noise(_maybe(rng, pool.noise_tail, 0.4), fake, rng))
    if rng.random() < JUNK_SHARE:
        text += _junk(rng)
    return text.strip(), output


def _split(prefix: str, n: int, pool: Pool, fakers: Fakers, rng: random.Random, seen: set[str]) -> list[dict]:
    """``n`` records with unique inputs where every field value occurs exactly once."""
    records: list[dict] = []
    while len(records) < n:
        text, output = _record(pool, fakers, rng)
        if text in seen or any(text.count(v) != 1 for v in output.values()):
            continue
        seen.add(text)
        records.append({"id": f"{prefix}-{len(records) + 1:04d}", "input": text, "output": output})
    return records


def _sources(seed: int, split: str) -> tuple[Fakers, random.Random]:
    """Fakers and random generator of one split: the test split does not change when the train pool does."""
    fakers = Fakers(Faker("zh_CN"), Faker("zh_TW"))
    for locale, fake in zip(("cn", "tw"), fakers):
        fake.seed_instance(f"{seed}-{split}-{locale}")
    return fakers, random.Random(f"{seed}-{split}")


def generate_complaints(n_train: int = 320, n_test: int = 100, seed: int = 0) -> tuple[list[dict], list[dict]]:
    """Generate ``(train, test)`` complaint records, deterministically for ``seed``.

    Records are ``{"id", "input", "output": {name, address, email, question}}``;
    test records use templates, topics and noise disjoint from the train ones.
    """
    seen: set[str] = set()
    test = _split("test", n_test, TEST_POOL, *_sources(seed, "test"), seen)
    train = _split("train", n_train, TRAIN_POOL, *_sources(seed, "train"), seen)
    return train, test


def write_complaints(out_dir: Path, n_train: int = 320, n_test: int = 100, seed: int = 0) -> tuple[Path, Path]:
    """Writes out_dir/train.jsonl and out_dir/test.jsonl (UTF-8, ensure_ascii=False, one JSON object per line) and returns their paths."""
    paths = (Path(out_dir) / "train.jsonl", Path(out_dir) / "test.jsonl")
    for path, records in zip(paths, generate_complaints(n_train, n_test, seed)):
        atomic_write_jsonl(path, records)
    return paths
