"""The entities recipe: CLUENER2020 sentences as ten list fields, its nested split, and the character CRF baseline."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import SHARED_DATA
from smalltune.config import load_config
from smalltune.data.records import load_splits
from smalltune.errors import ConfigError, DataError
from smalltune.evaluation.baselines import build_baseline
from smalltune.evaluation.crf_tagger import CharCrf, bio_tags, entity_spans, span_entities, tagged_spans
from smalltune.recipes.demo import RECIPES, UNTUNED_SAMPLE_FILE, demo_eval_sets, prepare_recipe, records_to_answer
from smalltune.recipes.synth.cluener import ENTITY_TYPES, cluener_sentences, entity_lists, split_pool, write_entities
from smalltune.tasks import build_task

needs_cluener = pytest.mark.skipif(not (SHARED_DATA / "cluener").is_dir(), reason="shared/data/cluener is not beside the repo")


def rows_of(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def micro_f1(answers: list[dict[str, list[str]]], golds: list[dict[str, list[str]]]) -> float:
    """Entity-level micro F1 over (record, type, string) triples."""
    predicted = {(i, kind, e) for i, answer in enumerate(answers) for kind, found in answer.items() for e in found}
    gold = {(i, kind, e) for i, answer in enumerate(golds) for kind, found in answer.items() for e in found}
    hits = len(predicted & gold)
    return 2 * hits / (len(predicted) + len(gold)) if hits else 0.0


def test_entity_lists_are_distinct_strings_in_order_of_first_appearance():
    label = {"name": {"叶老桂": [[9, 11]], "王五": [[2, 3], [20, 21]]}, "company": {"浙商银行": [[0, 3]]}}
    lists = entity_lists(label)
    assert list(lists) == list(ENTITY_TYPES)
    assert lists["name"] == ["王五", "叶老桂"] and lists["company"] == ["浙商银行"] and lists["address"] == []


def test_a_split_that_would_overlap_is_refused():
    with pytest.raises(DataError, match="would overlap; lower --train-records or --test-records"):
        split_pool(list(range(10)), 6, 5, seed=0)


@needs_cluener
def test_the_split_is_deterministic_disjoint_and_nested(tmp_path):
    assert RECIPES["entities"].n_test >= 500
    small, again, large = (write_entities(tmp_path / name, n, 500, SHARED_DATA)
                           for name, n in (("small", 250), ("again", 250), ("large", 1000)))
    assert [path.read_bytes() for path in small] == [path.read_bytes() for path in again]
    train, test = rows_of(small[0]), rows_of(small[1])
    assert len(train) == 250 and len(test) == 500
    assert not {r["input"] for r in train} & {r["input"] for r in test}  # CLUENER's sentences are distinct
    assert rows_of(large[0])[:250] == train and rows_of(large[1]) == test  # the curve's runs nest, one test set
    assert all(set(row) == {"id", "input", "output"} for row in train + test)


@needs_cluener
def test_the_entity_lists_match_the_spans(tmp_path):
    source = {row["line"]: row for row in cluener_sentences(SHARED_DATA)}
    for record in rows_of(write_entities(tmp_path, 300, 500, SHARED_DATA)[1]):
        row = source[int(record["id"].removeprefix("test-"))]
        assert record["input"] == row["text"] and list(record["output"]) == list(ENTITY_TYPES)
        for kind, found in record["output"].items():
            spans = row["label"].get(kind, {})
            assert sorted(found) == sorted(spans) and len(set(found)) == len(found)
            assert all(row["text"][start:end + 1] == entity for entity in found for start, end in spans[entity])
            firsts = [min(start for start, _ in spans[entity]) for entity in found]
            assert firsts == sorted(firsts)


def test_gold_strings_become_bio_tags_at_every_occurrence_and_back():
    text = "北京大学的王五说，王五去了北京。"
    spans = entity_spans(text, {"address": ["北京"], "organization": ["北京大学"], "name": ["王五"]})
    assert spans == [(0, 4, "organization"), (5, 7, "name"), (9, 11, "name"), (13, 15, "address")]
    tags = bio_tags(len(text), spans)
    assert tags[:5] == ["B-organization", "I-organization", "I-organization", "I-organization", "O"]
    assert tagged_spans(tags) == spans
    assert tagged_spans(["I-name", "I-name", "B-name", "I-address"]) == [(0, 2, "name"), (2, 3, "name"), (3, 4, "address")]
    assert span_entities(text, spans, ["name", "address", "book"]) == {"name": ["王五"], "address": ["北京"], "book": []}


@needs_cluener
def test_the_crf_beats_an_empty_answer_on_held_out_sentences(tmp_path):
    train, test = (rows_of(path) for path in write_entities(tmp_path, 300, 500, SHARED_DATA))
    tagger = CharCrf(list(ENTITY_TYPES))
    tagger.fit([r["input"] for r in train], [r["output"] for r in train])
    answers = [json.loads(json.dumps(found, ensure_ascii=False)) for found in tagger.entities([r["input"] for r in test])]
    for answer, record in zip(answers, test):
        assert list(answer) == list(ENTITY_TYPES)
        assert all(isinstance(e, str) and e in record["input"] for found in answer.values() for e in found)
    golds = [r["output"] for r in test]
    empty = [dict.fromkeys(ENTITY_TYPES, []) for _ in test]
    assert micro_f1(empty, golds) == 0.0
    assert micro_f1(answers, golds) > 0.2  # measured 0.29 on these 500 sentences


@needs_cluener
def test_the_crf_tagger_baseline_answers_the_recipe_json(tmp_path):
    config = load_config(prepare_recipe("entities", tmp_path, n_train=300, n_test=50, log=lambda _: None))
    assert config.eval.baselines == ["crf-tagger"]
    task = build_task(config)
    splits = load_splits(config.data, check=task.check)
    assert splits.problems == [] and len(splits.train) == 300 and not splits.validation
    baseline = build_baseline("crf-tagger", config)
    baseline.fit(splits.train)
    parsed = task.parse_all(baseline.answer(splits.test), splits.test)
    assert all(p.ok and list(p.value) == list(ENTITY_TYPES) for p in parsed)


def test_the_crf_tagger_refuses_fields_that_are_not_lists():
    with pytest.raises(ConfigError, match=r"crf-tagger tags entity lists, and fields \['name', 'address', 'email', "
                                          r"'question'\] are not `type: list`"):
        build_baseline("crf-tagger", RECIPES["complaints"].config())


@needs_cluener
def test_the_entities_demo_measures_the_untuned_model_on_its_first_100_held_out_sentences_only(tmp_path):
    """The untuned passes (zero- and 3-shot) are the slowest of the demo: they run on a sample, the fine-tuned model
    and the CRF on every held-out sentence."""
    prepare_recipe("entities", tmp_path, n_train=250, n_test=500, log=lambda _: None)
    sample = rows_of(tmp_path / "data" / UNTUNED_SAMPLE_FILE)
    assert sample == rows_of(tmp_path / "data" / "test.jsonl")[:100]
    held_out, sampled = demo_eval_sets("entities", tmp_path, untuned=True)
    assert (held_out.test_file, held_out.untuned) == (None, False)
    assert (sampled.test_file, sampled.untuned) == (tmp_path / "data" / UNTUNED_SAMPLE_FILE, True)
    assert not any(s.untuned for s in demo_eval_sets("entities", tmp_path, untuned=False))  # a later seed
    assert records_to_answer("entities", tmp_path, 500, seeds=1) == 500 + 100 * 3
    assert demo_eval_sets("complaints", tmp_path, untuned=True)[0].untuned  # other recipes: the whole held-out set
