"""`smalltune label` against a real HTTP teacher on 127.0.0.1 that fails on purpose (tests/teacher_server.py)."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from conftest import make_run_dir, write_jsonl
from teacher_server import Script, TeacherServer, serving

from smalltune.config import load_config
from smalltune.data.records import Record, load_records
from smalltune.errors import ConfigError
from smalltune.io import read_appended, read_jsonl
from smalltune.labelling.label import REJECT_KEYS, Outputs, label_file
from smalltune.labelling.teacher import TeacherError, with_teacher
from smalltune.labelling.redact import Redaction
from smalltune.labelling.select import choose, select_diverse
from smalltune.recipes.synth.complaints import generate_complaints
from smalltune.tasks import build_task

FAST_TEACHER = {"model": "teacher-test", "api_key_env": None, "concurrency": 4, "timeout": 0.4,
                "max_retries": 3, "backoff": 0.1, "max_backoff": 0.5}


def complaints(n: int, seed: int = 3) -> list[dict]:
    """Raw complaint records with their correct answers: {id, input, output}."""
    train, _ = generate_complaints(n_train=n, n_test=0, seed=seed)
    return train


def answers_of(rows: list[dict]) -> dict[str, str]:
    return {row["input"]: json.dumps(row["output"], ensure_ascii=False) for row in rows}


def write_task(tmp_path: Path, rows: list[dict], url: str, **teacher) -> tuple[Path, Path]:
    """A complaints task file whose teacher is the test server, and the raw file (outputs removed)."""
    raw = write_jsonl(tmp_path / "raw.jsonl", [{"id": r["id"], "input": r["input"]} for r in rows])
    task = yaml.safe_load(Path(__file__).parents[1].joinpath("src/smalltune/recipes/complaints.yaml").read_text())
    task["data"] = {"train": "labelled.jsonl", "format": "alpaca"}
    task["teacher"] = {**FAST_TEACHER, "base_url": url, **teacher}
    task_file = tmp_path / "task.yaml"
    task_file.write_text(yaml.safe_dump(task, allow_unicode=True, sort_keys=False), encoding="utf-8")
    return task_file, raw


def decided_ids(out: Path) -> list[str]:
    outputs = Outputs(out)
    return [row["id"] for row in read_appended(outputs.labelled, ("id", "label_status"))
            + read_appended(outputs.rejects, REJECT_KEYS)]


def test_faults_are_retried_repaired_or_rejected_and_nothing_is_lost(tmp_path):
    rows = complaints(24)
    text = [r["input"] for r in rows]
    faults = {text[0]: ["429", "429"], text[1]: ["500"], text[2]: ["slow"], text[3]: ["invalid"],
              text[4]: ["ungrounded"], text[5]: ["invalid", "invalid"], text[6]: ["ungrounded", "ungrounded"]}
    with TeacherServer(Script(answers_of(rows), faults)) as teacher:
        task_file, raw = write_task(tmp_path, rows, teacher.url, price_input=2.0, price_output=8.0)
        config = load_config(task_file)
        [summary] = label_file(config, raw, tmp_path / "labelled.jsonl")

    assert {k: summary[k] for k in ("records", "accepted", "repaired", "rejected", "unlabelled")} == {
        "records": 24, "accepted": 20, "repaired": 2, "rejected": 2, "unlabelled": 0}
    assert json.loads((tmp_path / "labelled.summary.json").read_text()) == summary
    assert summary["this_run"]["retries"] == {"429": 2, "500": 1, "timeout": 1}
    assert summary["this_run"]["cost"] > 0 and summary["teacher"]["response_format"] == "json_schema"

    # the labelled file is training data for the same task file, with the teacher's (correct) answers
    loaded = load_records(tmp_path / "labelled.jsonl", config.data, check=build_task(config).check)
    assert loaded.problems == [] and len(loaded.records) == 22
    gold = {r["id"]: r["output"] for r in rows}
    assert all(record.output == gold[record.id] for record in loaded.records)
    statuses = {row["id"]: row["label_status"] for row in read_jsonl(tmp_path / "labelled.jsonl")}
    assert statuses[rows[3]["id"]] == statuses[rows[4]["id"]] == "repaired"

    rejects = {row["id"]: row for row in read_jsonl(tmp_path / "labelled.rejects.jsonl")}
    assert set(rejects) == {rows[5]["id"], rows[6]["id"]}
    assert "invalid JSON" in rejects[rows[5]["id"]]["reason"] or "no JSON" in rejects[rows[5]["id"]]["reason"]
    assert "not found in the text" in rejects[rows[6]["id"]]["reason"]

    # retries waited longer each time; the repair request told the teacher what was wrong
    first, second, third = (e.at for e in teacher.requests_for(text[0]))
    assert second - first >= 0.08 and third - second >= 0.16
    repair = [e for e in teacher.requests_for(text[4]) if e.feedback]
    assert len(repair) == 1 and "not found in the text" in repair[0].messages[-1]["content"]
    assert all(e.response_format == "json_schema" for e in teacher.log)


def test_json_mode_falls_back_when_the_endpoint_refuses_it(tmp_path):
    rows = complaints(6)
    with TeacherServer(Script(answers_of(rows), refuse_formats=("json_schema", "json_object"))) as teacher:
        task_file, raw = write_task(tmp_path, rows, teacher.url, concurrency=1)
        [summary] = label_file(load_config(task_file), raw, tmp_path / "labelled.jsonl")
    assert summary["accepted"] == 6 and summary["teacher"]["response_format"] == "none"
    assert [e.response_format for e in teacher.log[:3]] == ["json_schema", "json_object", None]
    assert len(teacher.log) == 6 + 2


def test_requests_per_minute_spaces_the_requests(tmp_path):
    rows = complaints(6)
    with TeacherServer(Script(answers_of(rows))) as teacher:
        task_file, raw = write_task(tmp_path, rows, teacher.url, requests_per_minute=600)
        label_file(load_config(task_file), raw, tmp_path / "labelled.jsonl")
    starts = sorted(e.at for e in teacher.log)
    assert len(starts) == 6 and min(b - a for a, b in zip(starts, starts[1:])) >= 0.08


def test_interrupted_run_resumes_without_asking_twice(tmp_path):
    rows = complaints(12)
    with TeacherServer(Script(answers_of(rows), {rows[2]["input"]: ["invalid"]})) as teacher:
        task_file, raw = write_task(tmp_path, rows, teacher.url, concurrency=1)
        config, out = load_config(task_file), tmp_path / "labelled.jsonl"

        def interrupt(tally):
            if tally.accepted + tally.repaired + tally.rejected == 5:
                raise KeyboardInterrupt

        with pytest.raises(KeyboardInterrupt):
            label_file(config, raw, out, on_record=interrupt)
        assert len(decided_ids(out)) == 5
        [summary] = label_file(config, raw, out)

    assert sorted(decided_ids(out)) == sorted(r["id"] for r in rows)
    assert summary["accepted"] + summary["repaired"] == 12 and summary["this_run"]["requests"] == 7
    assert len(teacher.log) == 12 + 1  # one request per record, plus the repair


def test_answers_received_before_a_kill_come_from_the_cache(tmp_path):
    rows = complaints(10)
    with TeacherServer(Script(answers_of(rows), {rows[9]["input"]: ["ungrounded"]})) as teacher:
        task_file, raw = write_task(tmp_path, rows, teacher.url, concurrency=1)
        config, out = load_config(task_file), tmp_path / "labelled.jsonl"
        label_file(config, raw, out)
        asked = len(teacher.log)
        # killed after the answers were cached but before the last 3 records were written, mid-line
        lines = out.read_text(encoding="utf-8").splitlines(keepends=True)
        out.write_text("".join(lines[:-3]) + lines[-3][:20], encoding="utf-8")
        [summary] = label_file(config, raw, out)

    assert len(teacher.log) == asked == 11
    assert summary["this_run"]["requests"] == 0 and summary["this_run"]["from_cache"] == 4
    assert sorted(decided_ids(out)) == sorted(r["id"] for r in rows)
    assert summary["accepted"] == 9 and summary["repaired"] == 1


def test_records_without_an_answer_stay_unlabelled_and_the_next_run_labels_them(tmp_path):
    rows = complaints(8)
    with TeacherServer(Script(answers_of(rows), {rows[7]["input"]: ["500"] * 3})) as teacher:
        task_file, raw = write_task(tmp_path, rows, teacher.url, max_retries=2, backoff=0.02)
        config, out = load_config(task_file), tmp_path / "labelled.jsonl"
        [first] = label_file(config, raw, out)
        [second] = label_file(config, raw, out)
    assert (first["accepted"], first["unlabelled"]) == (7, 1)
    assert (second["accepted"], second["unlabelled"], second["this_run"]["requests"]) == (8, 0, 1)


def test_killed_cli_run_finishes_every_record_exactly_once(tmp_path):
    rows = complaints(40)
    with TeacherServer(Script(answers_of(rows), delay=0.05)) as teacher:
        task_file, raw = write_task(tmp_path, rows, "http://127.0.0.1:9/v1", model="placeholder", concurrency=4)
        out = tmp_path / "labelled.jsonl"
        command = [sys.executable, "-m", "smalltune.cli", "label", str(task_file), "--input", str(raw), "--out",
                   str(out), "--base-url", teacher.url, "--model", "teacher-test"]
        run = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 60
        while not (out.is_file() and out.read_text(encoding="utf-8").count("\n") >= 8):
            assert run.poll() is None and time.monotonic() < deadline, "the run ended before it could be killed"
            time.sleep(0.01)
        os.kill(run.pid, signal.SIGKILL)
        run.wait()
        killed_after = len(decided_ids(out))
        finished = subprocess.run(command, capture_output=True, text=True, timeout=60)

    assert finished.returncode == 0, finished.stdout + finished.stderr
    assert 8 <= killed_after < 40
    assert sorted(decided_ids(out)) == sorted(r["id"] for r in rows)
    assert len(teacher.log) <= 40 + 4  # at most the requests in flight at the kill are asked again
    summary = json.loads((tmp_path / "labelled.summary.json").read_text())
    assert (summary["accepted"], summary["unlabelled"]) == (40, 0)
    assert "accepted 40" in finished.stdout


def test_classify_labels_are_plain_answers_checked_against_the_label_list(tmp_path):
    rows = [{"id": "a", "input": "国足客场二比零取胜"}, {"id": "b", "input": "央行宣布下调存款准备金率"},
            {"id": "c", "input": "这句话谁也说不清"}]
    with TeacherServer(Script({rows[0]["input"]: "体育", rows[1]["input"]: "类别：财经。"})) as teacher:
        task_file, raw = write_task(tmp_path, rows, teacher.url)
        task = yaml.safe_load(task_file.read_text(encoding="utf-8"))
        task.update(kind="classify", labels=["体育", "财经", "科技"], instruction="判断新闻标题的类别。")
        del task["fields"]
        task_file.write_text(yaml.safe_dump(task, allow_unicode=True, sort_keys=False), encoding="utf-8")
        config = load_config(task_file)
        [summary] = label_file(config, raw, tmp_path / "labelled.jsonl")
    assert (summary["accepted"], summary["rejected"]) == (2, 1)
    labelled = load_records(tmp_path / "labelled.jsonl", config.data, check=build_task(config).check)
    assert {r.id: r.output for r in labelled.records} == {"a": "体育", "b": "财经"}
    assert "not one of the labels" in read_jsonl(tmp_path / "labelled.rejects.jsonl")[0]["reason"]
    assert all(e.response_format is None and "候选类别：体育，财经，科技" in e.messages[-1]["content"]
               for e in teacher.log if not e.feedback)


def test_limit_and_holdout_label_disjoint_representative_records(tmp_path):
    rows = complaints(30)
    with TeacherServer(Script(answers_of(rows))) as teacher:
        task_file, raw = write_task(tmp_path, rows, teacher.url)
        summaries = label_file(load_config(task_file), raw, tmp_path / "labelled.jsonl", limit=8, holdout=4, seed=1)
    labelled = {row["id"] for row in read_jsonl(tmp_path / "labelled.jsonl")}
    held = {row["id"] for row in read_jsonl(tmp_path / "labelled.holdout.jsonl")}
    assert (len(labelled), len(held), labelled & held) == (8, 4, set())
    assert [s["accepted"] for s in summaries] == [8, 4] and len(teacher.log) == 12


def test_redacted_text_leaves_the_machine_masked_and_answers_come_back_whole(tmp_path):
    text = "我叫李雷，手机138 1234 5678，身份证110101199003071234，邮箱lilei@example.com。宽带三天没网了。"
    sent = "我叫李雷，手机[PHONE_1]，身份证[ID_1]，邮箱[EMAIL_1]。宽带三天没网了。"
    answer = {"name": "李雷", "address": "", "email": "[EMAIL_1]", "question": "宽带三天没网了"}
    rows = [{"id": "r1", "input": text, "output": {}}]
    with TeacherServer(Script({sent: json.dumps(answer, ensure_ascii=False)})) as teacher:
        task_file, raw = write_task(tmp_path, rows, teacher.url)
        [summary] = label_file(load_config(task_file), raw, tmp_path / "labelled.jsonl", redact=True)
    assert summary["accepted"] == 1
    assert [e.text for e in teacher.log] == [sent]
    assert read_jsonl(tmp_path / "labelled.jsonl")[0]["output"]["email"] == "lilei@example.com"
    assert "lilei" not in (tmp_path / "labelled.cache.jsonl").read_text(encoding="utf-8")


@pytest.mark.parametrize("text", [
    "电话13812345678，备用+86-139-8765-4321，座机010-87654321",
    "身份证号11010519491231002X，邮箱 wang.fang@qq.com 和 13800000000@163.com",
])
def test_redaction_masks_personal_data_and_restores_it(text):
    redaction = Redaction()
    masked = redaction.mask(text)
    assert not any(ch.isdigit() for ch in masked.replace("_1]", "").replace("_2]", "").replace("_3]", ""))
    assert "@" not in masked
    assert redaction.restore(masked) == text
    assert redaction.mask(text) == masked  # the same value keeps its placeholder


def test_redaction_leaves_other_numbers_alone():
    text = "订单号20240101，金额300元，2024-03-15到期，邮编100080"
    assert Redaction().mask(text) == text


def test_diverse_selection_is_seeded_and_covers_rare_kinds_of_text():
    def records(topic: str, phrase: str, count: int, length: int) -> list[Record]:
        return [Record(id=f"{topic}{i}", where="-", input=f"{phrase}{i % 7}" + "啊" * (length + i % 5), output=None)
                for i in range(count)]

    pool = (records("common", "宽带网速很慢，客服一直不接电话", 900, 10)
            + records("rare", "物业乱收停车费还威胁业主", 90, 40)
            + records("rarest", "快递员把包裹扔在门口被偷了", 10, 80))
    chosen = select_diverse(pool, 30, seed=0)
    assert [r.id for r in chosen] == [r.id for r in select_diverse(pool, 30, seed=0)]
    assert len({r.input for r in chosen}) == 30  # the pool repeats texts: none is chosen twice
    topics = {r.id.rstrip("0123456789") for r in chosen}
    assert topics == {"common", "rare", "rarest"}  # a random 30 of 1000 holds a 'rarest' one in 26% of draws
    assert [r.id for r in select_diverse(pool, 30, seed=1)] != [r.id for r in chosen]

    train, held = choose(pool, 20, 10, seed=0)
    assert (len(train), len(held)) == (20, 10) and not {r.id for r in train} & {r.id for r in held}
    assert choose(pool, 20, 10, seed=0) == (train, held)


def test_unusable_teacher_settings_are_reported_with_the_fix(tmp_path, monkeypatch):
    rows = complaints(3)
    task_file, raw = write_task(tmp_path, rows, "http://127.0.0.1:9/v1", model=None)
    with pytest.raises(ConfigError, match="--model"):
        label_file(load_config(task_file), raw, tmp_path / "labelled.jsonl")
    with pytest.raises(ConfigError, match="teacher.concurrency"):
        with_teacher(load_config(task_file), concurrency=0)

    task_file, raw = write_task(tmp_path, rows, "http://127.0.0.1:9/v1", api_key_env="SMALLTUNE_TEST_KEY")
    monkeypatch.delenv("SMALLTUNE_TEST_KEY", raising=False)
    with pytest.raises(ConfigError, match=r"\$SMALLTUNE_TEST_KEY is not set"):
        label_file(load_config(task_file), raw, tmp_path / "labelled.jsonl")

    monkeypatch.setenv("SMALLTUNE_TEST_KEY", "wrong")
    with TeacherServer(Script(answers_of(rows), api_key="right")) as teacher:
        task_file, raw = write_task(tmp_path, rows, teacher.url, api_key_env="SMALLTUNE_TEST_KEY")
        with pytest.raises(TeacherError, match=r"401.*check the key in \$SMALLTUNE_TEST_KEY"):
            label_file(load_config(task_file), raw, tmp_path / "labelled.jsonl")

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        closed_port = probe.getsockname()[1]
    task_file, raw = write_task(tmp_path, rows, f"http://127.0.0.1:{closed_port}/v1", max_retries=1, backoff=0.01)
    with pytest.raises(TeacherError, match="check teacher.base_url"):
        label_file(load_config(task_file), raw, tmp_path / "labelled.jsonl")


def test_smalltune_serve_as_teacher_garbage_answers_are_rejected_with_reasons(tmp_path, tiny_qwen3_dir):
    from smalltune.inference.transformers_engine import TransformersEngine as Engine
    from smalltune.serving.app import create_app

    run_dir = make_run_dir(tmp_path / "served", tiny_qwen3_dir, "extract",
                           model={"name": str(tiny_qwen3_dir), "max_length": 1024, "dtype": "float32"})
    rows = complaints(3)
    with serving(create_app(Engine.from_run(run_dir))) as url:
        task_file, raw = write_task(tmp_path, rows, url, model="tiny-extract", timeout=60)
        [summary] = label_file(load_config(task_file), raw, tmp_path / "labelled.jsonl")
    assert (summary["accepted"], summary["repaired"], summary["rejected"], summary["unlabelled"]) == (0, 0, 3, 0)
    assert summary["this_run"]["requests"] == 6  # each record: the question, then the reason fed back once
    rejects = read_jsonl(tmp_path / "labelled.rejects.jsonl")
    assert sorted(row["id"] for row in rejects) == sorted(r["id"] for r in rows)
    assert all(len(row["answers"]) == 2 and "JSON" in row["reason"] for row in rejects)  # parsed, not refused
