"""Evaluation a user can trust: metrics per task kind, every system on the same records, the rules baseline,
validation metrics during training, the best checkpoint kept, and where training logs go."""

from __future__ import annotations

import json

import pytest
from safetensors.torch import load_file

from smalltune.config import TaskConfig
from smalltune.data.records import Record
from smalltune.errors import ConfigError
from smalltune.evaluation.evaluate import (TUNED, UNTUNED, EvalSet, evaluate_run, evaluate_sets, few_shot_name, run_baseline,
                                           score_answers)
from smalltune.recipes.synth.complaints import FIELDS, generate_complaints
from smalltune.tasks import Parsed, build_task
from smalltune.tasks.classify import NO_LABEL
from smalltune.tasks.metrics import rouge_l
from smalltune.runs import RunDir
from smalltune.training.callbacks import tracker_callbacks
from conftest import write_jsonl

SYSTEMS = ["complaint-rules", UNTUNED, few_shot_name(2), TUNED]


def config(kind: str, **extra) -> TaskConfig:
    return TaskConfig(name="t", kind=kind, data={"train": "x.jsonl"}, **extra)


def rec(text: str, output, id_: str = "1") -> Record:
    return Record(id=id_, where=f"f:{id_}", input=text, output=output)


# ---- metrics -----------------------------------------------------------------------------------


def test_extract_counts_values_missing_from_the_input_as_hallucinated_only_for_extractive_fields():
    task = build_task(config("extract", fields={"name": "姓名", "city": {"description": "城市", "extractive": False}}))
    records = [rec("我叫李雷，住在北京。", {"name": "李雷", "city": "北京"})]
    made_up = task.score([Parsed({"name": "王伟", "city": "上海"})], records)
    assert made_up["hallucinated"] == 1.0  # name is extractive and made up; city is not extractive
    copied = task.score([Parsed({"name": "李 雷", "city": "上海"})], records)
    assert copied["hallucinated"] == 0.0 and copied["field_exact.name"] == 1.0
    assert task.details([Parsed({"name": "王伟", "city": "上海"})], records)["hallucinated_values"] == [
        {"id": "1", "field": "name", "value": "王伟"}]


def test_extract_character_f1_gives_partial_credit_where_exact_match_gives_none():
    task = build_task(config("extract", fields={"address": "地址"}))
    scores = task.score([Parsed({"address": "北京市海淀区"})], [rec("x", {"address": "北京市海淀区中关村"})])
    assert scores["field_exact"] == 0.0 and 0.7 < scores["field_f1"] < 1.0


def test_classify_details_give_per_label_precision_recall_and_a_confusion_matrix_with_a_no_label_column():
    task = build_task(config("classify", labels=["体育", "财经"]))
    records = [rec("a", "体育"), rec("b", "体育"), rec("c", "财经")]
    parsed = [Parsed("体育"), Parsed("财经"), Parsed(None, "not one of the labels")]
    details = task.details(parsed, records)
    assert details["confusion"]["columns"] == ["体育", "财经", NO_LABEL]
    assert details["confusion"]["counts"] == [[1, 1, 0], [0, 0, 1]]
    assert details["per_label"]["体育"] == {"precision": 1.0, "recall": 0.5, "f1": pytest.approx(2 / 3), "support": 2}
    assert details["per_label"]["财经"]["precision"] == 0.0
    assert [task.record_score(p, r) for p, r in zip(parsed, records)] == [1.0, 0.0, 0.0]


def test_chat_rouge_l_rewards_order_where_character_f1_does_not():
    task = build_task(config("chat"))
    reference = "本宫知道了，退下吧"
    shuffled = "退下吧，本宫知道了"
    scores = task.score([Parsed(shuffled)], [rec("q", reference)])
    assert scores["char_f1"] == 1.0 and scores["rouge_l"] < 0.7
    assert rouge_l(reference, reference) == 1.0 and rouge_l("", "有") == 0.0
    lengths = task.details([Parsed("嗯"), Parsed("好的呀")], [rec("q", "嗯嗯"), rec("q", "好")])["reply_chars"]
    assert lengths["min"] == 1 and lengths["max"] == 3 and lengths["mean"] == 2


def test_every_headline_metric_gets_an_interval_around_its_value():
    task = build_task(config("extract", fields=FIELDS))
    records = [rec(f"我叫李雷{i}", {"name": f"李雷{i}", "address": "", "email": "", "question": ""}, str(i)) for i in range(30)]
    answers = [json.dumps(r.output if i % 3 else {**r.output, "name": "错"}, ensure_ascii=False) for i, r in enumerate(records)]
    result = score_answers(task, "s", records, answers, seconds=2.0)
    assert set(result.intervals) == set(result.metrics)
    for metric, value in result.metrics.items():
        lo, hi = result.intervals[metric]
        assert lo <= value <= hi, metric
    assert result.intervals["record_exact"][0] < 2 / 3 < result.intervals["record_exact"][1]
    assert result.records_per_second == 15 and result.hours_per_million == pytest.approx(1e6 / 15 / 3600)


# ---- the rules baseline ------------------------------------------------------------------------


def test_complaint_rules_find_email_name_address_and_the_question_sentence():
    text = "您好！我叫王芳，住在浙江省杭州市西湖区文三路12号。联系电话13800000000。家里宽带每天晚上都断网！邮箱wf@163.com"
    gold = {"name": "王芳", "address": "浙江省杭州市西湖区文三路12号", "email": "wf@163.com", "question": "家里宽带每天晚上都断网！"}
    result = run_baseline("complaint-rules", config("extract", fields=FIELDS), [], [rec(text, gold)])
    assert json.loads(result.answers[0]) == gold
    assert result.metrics["record_exact"] == 1.0


def test_a_baseline_that_does_not_fit_the_task_is_a_config_error_naming_the_fix():
    with pytest.raises(ConfigError, match="eval.baselines"):
        run_baseline("complaint-rules", config("chat"), [], [rec("q", "a")])
    with pytest.raises(ConfigError, match="complaint-rules"):
        run_baseline("no-such-baseline", config("chat"), [], [rec("q", "a")])


# ---- one evaluated run on the tiny model -------------------------------------------------------


def test_eval_scores_every_system_on_the_same_records(evaluated_tiny_run):
    run_dir, results = evaluated_tiny_run
    assert list(results) == SYSTEMS
    saved = json.loads((run_dir / "metrics.json").read_text(encoding="utf-8"))
    assert list(saved["systems"]) == SYSTEMS and saved["test_records"] == 3 and saved["headline"] == "field_exact"
    train_ids = [json.loads(line)["id"] for line in (run_dir.parent.parent / "train.jsonl").read_text().splitlines()]
    assert saved["few_shot_ids"] == [i for i in train_ids if i in saved["few_shot_ids"]][:2]
    for name, system in saved["systems"].items():
        assert set(system["ci95"]) == set(system["metrics"]), name
        assert system["records_per_second"] > 0 and system["hours_per_million_records"] > 0
    assert results["complaint-rules"].metrics["field_exact.email"] == 1.0  # the rules read every email
    predictions = [json.loads(line) for line in (run_dir / "predictions.jsonl").read_text(encoding="utf-8").splitlines()]
    assert len(predictions) == 3
    for i, row in enumerate(predictions):
        assert list(row["answers"]) == SYSTEMS and list(row["scores"]) == SYSTEMS
        assert row["answers"][TUNED] == results[TUNED].answers[i]


def test_test_sets_scored_with_one_model_load_answer_as_each_set_alone(evaluated_tiny_run, tmp_path):
    """The demo scores the held-out and the hand-written records with the models loaded once: each set gets the
    answers and metrics it gets alone (the untuned model only where asked), in its own results folder."""
    run_dir, _ = evaluated_tiny_run
    _, rows = generate_complaints(n_train=1, n_test=4, seed=5)
    first, second = write_jsonl(tmp_path / "first.jsonl", rows[:2]), write_jsonl(tmp_path / "second.jsonl", rows[2:])
    # the transformers engine: the orchestration is the engine's seam, and it loads without an OpenVINO compile
    together = evaluate_sets(run_dir, [EvalSet(first, untuned=False), EvalSet(second)], engine="transformers")
    alone = [evaluate_run(run_dir, test_file=first, untuned=False, engine="transformers"),
             evaluate_run(run_dir, test_file=second, engine="transformers")]
    assert [list(results) for results in together] == [["complaint-rules", TUNED], SYSTEMS]
    for results, expected in zip(together, alone, strict=True):
        assert list(results) == list(expected)
        for name, result in results.items():
            assert (result.answers, result.metrics) == (expected[name].answers, expected[name].metrics), name
    saved = json.loads((RunDir.at(run_dir).evaluation(second).path / "metrics.json").read_text(encoding="utf-8"))
    assert list(saved["systems"]) == SYSTEMS and saved["test_records"] == 2


def test_few_shot_prompts_get_room_for_the_examples(evaluated_tiny_run):
    from smalltune.data.records import load_splits
    from smalltune.inference.transformers_engine import TransformersEngine as Engine

    run_dir, _ = evaluated_tiny_run
    engine = Engine.from_run(run_dir)
    splits = load_splits(engine.config.data, check=engine.task.check)
    shots, records = splits.train[:2], splits.test[:1]
    try:
        squeezed = any(engine.generate(records, shots=shots).truncated)
    except ValueError:  # the prompt does not fit even with the record's text cut away
        squeezed = True
    assert squeezed
    roomy = engine.generate(records, shots=shots, budget=engine.config.model.max_length * 3)
    assert not any(roomy.truncated)
    assert engine.config.model.max_length == 256  # the budget is an argument: the engine's config is untouched


def test_cli_table_lists_every_system(evaluated_tiny_run, monkeypatch):
    from smalltune import cli

    _, results = evaluated_tiny_run
    monkeypatch.setattr(cli.console, "width", 200)
    with cli.console.capture() as captured:
        cli.print_results(results, "eval")
    text = captured.get()
    assert all(name in text for name in SYSTEMS) and "records/s" in text and "field_exact" in text


# ---- training: validation metrics, best checkpoint, trackers -------------------------------------


def test_training_scores_the_validation_records_at_each_evaluation_and_keeps_the_best_checkpoint(evaluated_tiny_run):
    run_dir, _ = evaluated_tiny_run
    log = [json.loads(line) for line in (run_dir / "train_log.jsonl").read_text().splitlines()]
    evaluated_at = [e["step"] for e in log if "eval_loss" in e]
    assert evaluated_at == [1, 2]
    assert [e["step"] for e in log if "eval_field_exact" in e] == evaluated_at
    assert {"eval_json_valid", "eval_field_f1", "eval_hallucinated"} <= {k for e in log for k in e}

    state = json.loads((run_dir / "checkpoints" / "checkpoint-2" / "trainer_state.json").read_text())
    best = state["best_model_checkpoint"]
    best_field_exact = max(e["eval_field_exact"] for e in log if "eval_field_exact" in e)
    assert best is not None and state["best_metric"] == pytest.approx(best_field_exact, abs=1e-4)
    kept = load_file(run_dir / "adapter" / "adapter_model.safetensors")
    at_best = load_file(f"{best}/adapter_model.safetensors")
    assert kept.keys() == at_best.keys()
    assert all(kept[k].equal(at_best[k]) for k in kept)


def test_default_tracking_is_swanlab_offline_inside_the_run_directory(evaluated_tiny_run):
    run_dir, _ = evaluated_tiny_run
    logs = list(RunDir(run_dir).swanlab.glob("run-*/run-*.swanlab"))
    assert len(logs) == 1
    logged = logs[0].read_bytes()
    assert b"train/loss" in logged and b"eval/field_exact" in logged and b"train/grad_norm" in logged


def test_report_to_tensorboard_writes_in_the_run_directory_and_none_attaches_nothing(tmp_path):
    from transformers.integrations import TensorBoardCallback

    settings = {"fields": FIELDS, "data": {"train": "x.jsonl"}, "kind": "extract", "name": "t"}
    (tensorboard,) = tracker_callbacks(TaskConfig(**settings, train={"report_to": "tensorboard"}), RunDir(tmp_path))
    assert isinstance(tensorboard, TensorBoardCallback) and RunDir(tmp_path).tensorboard.is_dir()
    assert tracker_callbacks(TaskConfig(**settings, train={"report_to": "none"}), RunDir(tmp_path)) == []


def test_swanlab_cloud_without_a_login_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.delenv("SWANLAB_API_KEY", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("SWANLAB_ROOT", str(tmp_path / ".swanlab"))  # where `swanlab login` keeps the key
    monkeypatch.chdir(tmp_path)
    cloud = TaskConfig(name="t", kind="chat", data={"train": "x.jsonl"}, train={"report_to": "swanlab-cloud"})
    with pytest.raises(ConfigError, match="swanlab login"):
        tracker_callbacks(cloud, RunDir(tmp_path))


def test_checkpoint_choice_prefers_the_better_metric_then_the_later_checkpoint():
    from smalltune.training.callbacks import checkpoint_score

    # a validation set answered perfectly early on must not keep the first, barely trained checkpoint
    assert checkpoint_score(1.0, 144) > checkpoint_score(1.0, 72)
    # the step only breaks ties: one more field right in 10,000 wins, even a million steps earlier
    assert checkpoint_score(1.0, 1) > checkpoint_score(1.0 - 1e-4, 10**6)
