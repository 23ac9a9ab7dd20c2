"""Tests for the synthetic complaint extraction data set."""

import json
import re

import pytest

from smalltune.recipes.synth.complaints import (
    FIELDS,
    JUNK_CHARS,
    TEST_POOL,
    TRAIN_POOL,
    to_traditional,
    generate_complaints,
    write_complaints,
)

TERMINALS = "。！？!?…"  # a question clause holds none of them; a question ends with one
EMAIL_CHARS = re.compile(r"[A-Za-z0-9._%+@-]")


@pytest.fixture(scope="module")
def splits():
    return generate_complaints(n_train=320, n_test=100, seed=0)


@pytest.fixture(scope="module")
def records(splits):
    return splits[0] + splits[1]


def test_fields_order_and_descriptions():
    assert list(FIELDS) == ["name", "address", "email", "question"]
    assert FIELDS["question"] == "投诉的内容，原文照录（含结尾标点）"


def test_counts_ids_and_record_shape(splits):
    train, test = splits
    assert len(train) == 320 and len(test) == 100
    assert train[0]["id"] == "train-0001" and train[-1]["id"] == "train-0320"
    assert test[0]["id"] == "test-0001" and test[-1]["id"] == "test-0100"
    ids = [r["id"] for r in train + test]
    assert len(set(ids)) == len(ids)
    for r in train + test:
        assert list(r) == ["id", "input", "output"]
        assert list(r["output"]) == list(FIELDS)


def test_inputs_unique(records):
    inputs = [r["input"] for r in records]
    assert len(set(inputs)) == len(inputs)


def test_deterministic_for_seed(splits):
    assert generate_complaints(320, 100, seed=0) == splits
    small = generate_complaints(5, 5, seed=7)
    assert json.dumps(small, ensure_ascii=False) == json.dumps(generate_complaints(5, 5, seed=7), ensure_ascii=False)


def test_different_seed_gives_different_data():
    a_train, a_test = generate_complaints(20, 20, seed=1)
    b_train, b_test = generate_complaints(20, 20, seed=2)
    assert [r["input"] for r in a_train] != [r["input"] for r in b_train]
    assert [r["input"] for r in a_test] != [r["input"] for r in b_test]


def test_values_are_extractive_and_unambiguous(records):
    for r in records:
        for value in r["output"].values():
            assert value and r["input"].count(value) == 1, (r["id"], value)


def _clauses(question):
    return [c for c in re.split(r"[，；。！？!?…]+", question) if c]


def _pool_clauses(pool):
    simplified = set(pool.problems)
    return simplified | {to_traditional()(c) for c in simplified}


def test_question_is_the_complaint_as_written_with_its_final_mark(splits):
    """The seed's labelling: all of the complaint's clauses, its final punctuation kept, nothing around it."""
    for records, pool in zip(splits, (TRAIN_POOL, TEST_POOL)):
        clauses = _pool_clauses(pool)
        for r in records:
            q = r["output"]["question"]
            assert q[-1] in TERMINALS and "\n" not in q, r["id"]
            assert set(_clauses(q)) <= clauses, r["id"]


def test_questions_run_over_several_clauses_and_sentences(records):
    counts = [len(_clauses(r["output"]["question"])) for r in records]
    assert set(counts) == {1, 2, 3, 4}
    assert 0.3 <= sum(n > 1 for n in counts) / len(counts) <= 0.85
    two_sentences = [r for r in records if re.search(r"[。！][^。！？]", r["output"]["question"])]
    assert len(two_sentences) >= 0.05 * len(records)


def test_traditional_script_postcodes_rooms_and_junk_occur(records):
    convert = to_traditional()
    traditional = [r for r in records if convert(r["input"]) == r["input"]]
    assert 0.05 <= len(traditional) / len(records) <= 0.25
    assert all(convert(v) == v for r in traditional for v in r["output"].values())
    addresses = [r["output"]["address"] for r in records]
    assert 0.2 <= sum(bool(re.search(r" \d{6}$", a)) for a in addresses) / len(addresses) <= 0.6
    assert any(re.search(r"\d单元\d+室", a) for a in addresses)
    junk_tails = [r for r in records if r["input"].rstrip("、，")[-1] in JUNK_CHARS]
    assert len(junk_tails) >= 0.05 * len(records)


def test_value_formats(records):
    for r in records:
        out, text = r["output"], r["input"]
        assert re.fullmatch(r"[\u4e00-\u9fff]{2,4}", out["name"]), out["name"]
        assert re.fullmatch(r"[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(\.[A-Za-z0-9-]+)+", out["email"]), out["email"]
        assert out["address"] == out["address"].strip()
        start = text.index(out["email"])
        end = start + len(out["email"])
        assert start == 0 or not EMAIL_CHARS.match(text[start - 1]), r["id"]
        assert end == len(text) or not EMAIL_CHARS.match(text[end]), r["id"]


def test_other_mail_domains_occur(records):
    domains = {r["output"]["email"].split("@")[1] for r in records}
    assert domains & {"qq.com", "163.com", "126.com", "foxmail.com", "sina.com"}
    assert len(domains) > 5


def test_input_length_and_whitespace(records):
    lengths = [len(r["input"]) for r in records]
    assert all(r["input"] == r["input"].strip() for r in records)
    assert all(30 <= n <= 360 for n in lengths)
    assert sum(40 <= n <= 240 for n in lengths) >= 0.9 * len(lengths)


def test_pool_sizes():
    for pool in (TRAIN_POOL, TEST_POOL):
        assert len(pool.skeletons) >= 12
        assert len(pool.problems) >= 40 and len(set(pool.problems)) == len(pool.problems)
        assert len(pool.noise) >= 8
        assert len(pool.topics) >= 6 and all(len(s) >= 3 for _, s in pool.topics)


def test_pools_are_disjoint():
    assert not set(TRAIN_POOL.templates) & set(TEST_POOL.templates)
    assert not set(TRAIN_POOL.problems) & set(TEST_POOL.problems)
    assert not set(TRAIN_POOL.noise) & set(TEST_POOL.noise)
    assert not {t for t, _ in TRAIN_POOL.topics} & {t for t, _ in TEST_POOL.topics}


def test_problem_sentences_have_no_terminals():
    for q in TRAIN_POOL.problems + TEST_POOL.problems:
        assert not any(c in q for c in TERMINALS + "\n")


def test_splits_draw_from_their_own_pool(splits):
    train, test = splits
    assert not {c for r in train for c in _clauses(r["output"]["question"])} & _pool_clauses(TEST_POOL)
    assert not {c for r in test for c in _clauses(r["output"]["question"])} & _pool_clauses(TRAIN_POOL)
    train_intros = [i.split("{}")[0] for i in TRAIN_POOL.name_intros if not i.startswith("{}")]
    test_intros = [i.split("{}")[0] for i in TEST_POOL.name_intros if not i.startswith("{}")]
    assert any(any(i + r["output"]["name"] in r["input"] for i in train_intros) for r in train)
    assert not any(any(i + r["output"]["name"] in r["input"] for i in test_intros) for r in train)
    assert not any(any(i + r["output"]["name"] in r["input"] for i in train_intros) for r in test)


def test_a_question_keeps_its_whole_run_of_closing_marks(splits):
    """The complaint as written ends at its last mark: nothing the generator appends after it starts with a mark
    (a model cannot tell a complainant's `？？？` from appended noise), and the training questions show runs of
    marks, so that the test pool's other runs (`。。。`) are a new wording, not a new convention; the tokenizer's one
    `。。。` token is copied inside training questions, so a model has seen it in an answer."""
    for split in splits:
        for r in split:
            question, text = r["output"]["question"], r["input"]
            after = text[text.index(question) + len(question):]
            assert question[-1] in TERMINALS and not (after and after[0] in TERMINALS), (r["id"], after[:5])
    train_runs = {r["output"]["question"][-2:] for r in splits[0] if r["output"]["question"][-2] in TERMINALS}
    assert {"。。", "！！", "？？"} <= train_runs
    assert any("。。。" in r["output"]["question"][:-3] for r in splits[0])
    assert any(r["output"]["question"].endswith("。。。") for r in splits[1])


def test_noise_appears(splits):
    train, test = splits
    assert any("工单号：GD" in r["input"] or "联系电话" in r["input"] for r in train)
    assert any("受理编号#" in r["input"] or "回拨号码" in r["input"] for r in test)
    assert sum(r["input"].endswith("[自动回复]") for r in train) > 0


def test_write_complaints_round_trips(tmp_path):
    train_path, test_path = write_complaints(tmp_path / "out", n_train=12, n_test=5, seed=3)
    assert (train_path.name, test_path.name) == ("train.jsonl", "test.jsonl")
    expected = generate_complaints(12, 5, seed=3)
    for path, records in zip((train_path, test_path), expected):
        raw = path.read_text(encoding="utf-8")
        assert "\\u" not in raw
        lines = raw.splitlines()
        assert len(lines) == len(records)
        assert [json.loads(line) for line in lines] == records
