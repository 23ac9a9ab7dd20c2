"""`smalltune predict` and the CLI's user-facing behaviour: resumable output, clear errors, data check."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from conftest import make_run_dir, write_jsonl
from smalltune.cli import app
from smalltune.config import TaskConfig, save_config
from smalltune.errors import DataError, OutputError
from smalltune.inference.predict import predict_file
from smalltune.recipes.synth.complaints import FIELDS, generate_complaints

runner = CliRunner()


def run_dir_with_adapter(tmp_path, model_dir):
    """A run directory as `train` leaves it, from one quick training step of the tiny model."""
    from smalltune.runs import RunDir
    from smalltune.training.run import build_trainer, save_run

    train_rows, test_rows = generate_complaints(n_train=4, n_test=7, seed=3)
    write_jsonl(tmp_path / "train.jsonl", train_rows)
    config = TaskConfig(
        name="tiny", kind="extract", fields=FIELDS,
        data={"train": tmp_path / "train.jsonl", "validation_share": 0, "test_share": 0},
        model={"name": str(model_dir), "max_length": 256, "dtype": "float32"},
        train={"epochs": 1, "batch_size": 4, "save_steps": 100},
        infer={"batch_size": 3, "max_new_tokens": 4}, output_dir=tmp_path / "runs",
    )
    trainer = build_trainer(config)
    trainer.train()
    save_run(trainer, RunDir.of(config), 1.0)
    inputs = write_jsonl(tmp_path / "in.jsonl", [{"id": r["id"], "input": r["input"]} for r in test_rows])
    return config.run_dir, inputs


def test_predict_resumes_after_a_kill_with_every_record_exactly_once(tmp_path, tiny_qwen3_dir):
    run_dir, inputs = run_dir_with_adapter(tmp_path, tiny_qwen3_dir)
    out = tmp_path / "out.jsonl"
    assert predict_file(run_dir, inputs, out) == 7
    lines = out.read_text(encoding="utf-8").splitlines()
    # simulate a kill: keep two answers and half of the third line
    out.write_text("\n".join(lines[:2]) + "\n" + lines[2][: len(lines[2]) // 2], encoding="utf-8")
    assert predict_file(run_dir, inputs, out) == 5
    rows = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    assert sorted(r["id"] for r in rows) == sorted(f"test-{i:04d}" for i in range(1, 8))
    assert all({"id", "answer", "result", "error", "input_shortened"} <= set(r) for r in rows)
    assert predict_file(run_dir, inputs, out) == 0  # nothing left to do


def test_predict_reports_a_bad_input_record_and_answers_the_rest(tmp_path, tiny_qwen3_dir):
    run_dir, inputs = run_dir_with_adapter(tmp_path, tiny_qwen3_dir)
    with inputs.open("a", encoding="utf-8") as handle:
        handle.write(json.dumps({"id": "no-text"}) + "\n")
    out = tmp_path / "out.jsonl"
    assert predict_file(run_dir, inputs, out) == 7
    rows = {r["id"]: r for r in map(json.loads, out.read_text(encoding="utf-8").splitlines())}
    bad = [r for r in rows.values() if r["answer"] is None]
    assert len(rows) == 8 and len(bad) == 1
    assert bad[0]["id"] == "no-text" and bad[0]["where"].endswith("in.jsonl:8") and "input" in bad[0]["error"]
    assert predict_file(run_dir, inputs, out) == 0
    assert len(out.read_text(encoding="utf-8").splitlines()) == 8  # the error line is not repeated on resume


def test_an_input_or_a_file_predict_did_not_write_is_never_the_output(tmp_path, tiny_qwen3_dir):
    run_dir = make_run_dir(tmp_path, tiny_qwen3_dir)
    inputs = tmp_path / "in.json"
    inputs.write_text('{"id": "a", "input": "张三的电话是13800000000"}\n{"id": "b", "input": "李四"}', encoding="utf-8")
    train_file, before = tmp_path / "train.jsonl", {}
    for path in (inputs, train_file):
        before[path] = path.read_bytes()
    with pytest.raises(OutputError, match="would overwrite the input"):
        predict_file(run_dir, inputs, tmp_path / "." / "in.json")
    with pytest.raises(OutputError, match=r"train\.jsonl:1: not a row of this command's output"):
        predict_file(run_dir, inputs, train_file)
    assert {path: path.read_bytes() for path in before} == before


def test_the_input_is_checked_before_the_model_is_loaded(tmp_path, tiny_qwen3_dir):
    from smalltune.runs import RunDir

    run = RunDir(make_run_dir(tmp_path, tiny_qwen3_dir))
    config = run.config()
    save_config(config.model_copy(update={"model": config.model.model_copy(update={"name": str(tmp_path / "gone")})}),
                run.task_file)  # loading the model would fail
    with pytest.raises(DataError, match="missing.jsonl: no such data file"):
        predict_file(run.path, tmp_path / "missing.jsonl", tmp_path / "out.jsonl")


def test_error_lines_are_written_once_however_the_input_path_is_spelled(tmp_path, tiny_qwen3_dir, monkeypatch):
    run_dir = make_run_dir(tmp_path, tiny_qwen3_dir)
    inputs = write_jsonl(tmp_path / "in.jsonl", [{"id": "x1"}, {"input": ""}])
    out = tmp_path / "out.jsonl"
    monkeypatch.chdir(tmp_path)
    predict_file(run_dir, "in.jsonl", out)
    predict_file(run_dir, inputs, out)
    rows = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    assert [(r["id"], r["where"]) for r in rows] == [("x1", f"{inputs}:1"), ("in-2", f"{inputs}:2")]


def test_cli_error_is_one_clear_line_without_traceback(tmp_path):
    import subprocess
    import sys

    proc = subprocess.run(
        [sys.executable, "-m", "smalltune.cli", "train", str(tmp_path / "missing.yaml")],
        capture_output=True, text=True,
    )
    assert proc.returncode == 2
    assert "no such task file" in proc.stdout and "Traceback" not in proc.stdout + proc.stderr


def test_data_check_lists_every_invalid_record_with_file_and_line(tmp_path, tiny_qwen3_dir):
    rows, _ = generate_complaints(n_train=12, n_test=1, seed=4)
    rows[3]["output"].pop("email")
    rows[7]["input"] = ""
    rows.append(dict(rows[0], id="dup"))
    write_jsonl(tmp_path / "d.jsonl", rows)
    config = TaskConfig(name="c", kind="extract", fields=FIELDS, data={"train": tmp_path / "d.jsonl"},
                        model={"name": str(tiny_qwen3_dir)})
    save_config(config, tmp_path / "task.yaml")
    result = runner.invoke(app, ["data", "check", str(tmp_path / "task.yaml")])
    assert result.exit_code == 1
    assert "d.jsonl:4:" in result.output and "email" in result.output
    assert "d.jsonl:8:" in result.output and "input" in result.output
    assert "duplicate" in result.output and "p50" in result.output


def test_predict_rows_of_a_classify_run_carry_each_candidates_probability(tmp_path, tiny_qwen3_dir):
    from conftest import make_run_dir

    # labels 投诉, 咨询, 表扬; a record may bring its own (alpaca's candidates column)
    run_dir = make_run_dir(tmp_path, tiny_qwen3_dir, "classify",
                           data={"train": tmp_path / "train.jsonl", "columns": {"candidates": "candidates"}})
    inputs = write_jsonl(tmp_path / "in.jsonl", [{"id": "a", "input": "快递三天没到，太慢了", "candidates": "投诉,咨询,表扬"},
                                                 {"id": "b", "input": "请问几点营业", "candidates": ["咨询", "表扬"]}])
    out = tmp_path / "out.jsonl"
    result = runner.invoke(app, ["predict", str(run_dir), str(inputs), "-o", str(out)])
    assert result.exit_code == 0, result.output
    rows = {r["id"]: r for r in map(json.loads, out.read_text(encoding="utf-8").splitlines())}
    assert list(rows["a"]["scores"]) == ["投诉", "咨询", "表扬"] and list(rows["b"]["scores"]) == ["咨询", "表扬"]
    for row in rows.values():
        assert sum(row["scores"].values()) == pytest.approx(1.0)
        assert row["result"] == row["answer"] == max(row["scores"], key=row["scores"].get) and row["error"] is None


def test_data_check_reports_a_record_whose_input_training_would_shorten(tmp_path, tiny_qwen3_dir):
    rows, _ = generate_complaints(n_train=12, n_test=1, seed=4)
    rows[5]["input"] += "后来又说了很多话，" * 40_000  # about 1 MB: far past model.max_length
    write_jsonl(tmp_path / "d.jsonl", rows)
    config = TaskConfig(name="c", kind="extract", fields=FIELDS, data={"train": tmp_path / "d.jsonl"},
                        model={"name": str(tiny_qwen3_dir)})
    save_config(config, tmp_path / "task.yaml")
    result = runner.invoke(app, ["data", "check", str(tmp_path / "task.yaml")])
    assert result.exit_code == 0, result.output
    assert "shortened: 1 record(s) too long for model.max_length" in result.output
    assert f"{tmp_path / 'd.jsonl'}:6" in result.output


def test_a_folder_of_html_pages_is_predicted_one_record_per_page(tmp_path, tiny_qwen3_dir):
    from smalltune.data.html import page_text
    from smalltune.data.records import load_inputs
    from smalltune.errors import OutputError
    from smalltune.runs import RunDir

    run_dir = make_run_dir(tmp_path, tiny_qwen3_dir)
    pages = tmp_path / "pages"
    pages.mkdir()
    body = "<html><head>{}</head><body><div>导航</div><p>我叫王芳，快递三天都没到。</p></body></html>"
    (pages / "a.html").write_bytes(body.format('<meta charset="gbk">').encode("gbk"))
    (pages / "b.htm").write_bytes(body.format("").encode("utf-8"))
    (pages / "notes.txt").write_text("not a page", encoding="utf-8")
    (pages / "empty.html").write_text("<script>x()</script>", encoding="utf-8")
    loaded = load_inputs(pages, RunDir.load(run_dir).config().data)
    assert [(r.id, r.input) for r in loaded.records] == [("a.html", "导航\n我叫王芳，快递三天都没到。"),
                                                          ("b.htm", page_text(body.format("")))]
    with pytest.raises(OutputError, match="read as input"):
        predict_file(run_dir, pages, pages / "out.jsonl")
    out = tmp_path / "out.jsonl"
    result = runner.invoke(app, ["predict", str(run_dir), str(pages), "-o", str(out)])
    assert result.exit_code == 0, result.output
    rows = {r["id"]: r for r in map(json.loads, out.read_text(encoding="utf-8").splitlines())}
    assert set(rows) == {"a.html", "b.htm", "empty.html"}
    assert "where" not in rows["a.html"] and "where" not in rows["b.htm"]  # answered, not invalid
    empty = rows["empty.html"]
    assert empty["answer"] is None and empty["where"] == str((pages / "empty.html").resolve())
    assert "'html' has no visible text" in empty["error"]


def test_an_input_named_by_url_gets_the_rows_of_the_same_file_on_disk(tmp_path, tiny_qwen3_dir):
    run_dir = make_run_dir(tmp_path, tiny_qwen3_dir)
    inputs = write_jsonl(tmp_path / "in.jsonl", [{"id": "a1", "input": "张三的电话是13800000000"}, {"input": "李四"},
                                                 {"id": "no-input"}])
    with pytest.raises(OutputError, match="would overwrite the input"):  # a file:// URL is checked as its file
        predict_file(run_dir, inputs.as_uri(), inputs)
    local, by_url = tmp_path / "local.jsonl", tmp_path / "url.jsonl"
    assert predict_file(run_dir, inputs, local) == 2
    result = runner.invoke(app, ["predict", str(run_dir), inputs.as_uri(), "-o", str(by_url)])
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in by_url.read_text(encoding="utf-8").splitlines()]
    assert next(r for r in rows if r["id"] == "no-input")["where"] == f"{inputs.as_uri()}:3"
    drop_where = lambda row: {k: v for k, v in row.items() if k != "where"}  # noqa: E731
    assert [drop_where(json.loads(line)) for line in local.read_text(encoding="utf-8").splitlines()] == [
        drop_where(row) for row in rows]
