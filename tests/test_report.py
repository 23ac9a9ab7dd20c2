"""The report a user opens after `smalltune eval`: it renders offline in a real browser, with its tables and plots."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from smalltune.config import TaskConfig
from smalltune.data.records import Record
from smalltune.evaluation.evaluate import TUNED, UNTUNED, few_shot_name, save_results, score_answers
from smalltune.evaluation.report import _char_diff, write_report
from smalltune.io import read_jsonl
from smalltune.tasks import build_task

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
ARTIFACTS = Path(__file__).resolve().parents[1] / "runs" / "test-artifacts"  # gitignored: look at the screenshot


def chromium(*args: str) -> str:
    """Run headless Chromium and return what it printed."""
    done = subprocess.run(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", *args],
        capture_output=True, text=True, timeout=120, check=True,
    )
    return done.stdout


def element(dom: str, tag: str, element_id: str) -> str:
    """The inner HTML of the element with this id (fails the test when it is missing)."""
    found = re.search(rf'<{tag} [^>]*id="{element_id}"[^>]*>(.*?)</{tag}>', dom, re.S)
    assert found, f"no <{tag} id={element_id}> in the page"
    return found.group(1)


def scored_run(tmp_path: Path, kind: str, records: list[Record], answers: dict[str, list[str]], **task) -> Path:
    """A run directory holding real evaluate outputs (metrics.json, predictions.jsonl) for given answers."""
    config = TaskConfig(name=f"report-{kind}", kind=kind, data={"train": "x.jsonl"}, output_dir=tmp_path, **task)
    scoring = build_task(config)
    results = {name: score_answers(scoring, name, records, texts, seconds=0.5) for name, texts in answers.items()}
    save_results(config.run_dir, config, scoring, records, results)
    return config.run_dir


@pytest.mark.skipif(CHROMIUM is None, reason="needs Chromium: `make setup` installs it (apt-get install chromium)")
def test_html_report_renders_in_headless_chromium_with_tables_plots_and_error_diffs(evaluated_tiny_run, tmp_path):
    run_dir, _ = evaluated_tiny_run
    page = run_dir / "report.html"
    source = page.read_text(encoding="utf-8")
    assert not re.search(r"<script|<link|src=\"http|url\(http", source)  # self-contained: nothing to fetch

    dom = chromium("--dump-dom", page.as_uri())
    scores = element(dom, "table", "scores")
    for name in ("complaint-rules", UNTUNED, few_shot_name(2), TUNED):
        assert f"<th>{name}</th>" in scores
    assert re.search(r'class="headline"><th>field_exact</th>', scores)
    assert "<svg" in element(dom, "figure", "plot-loss") and "validation field_exact" in element(dom, "figure", "plot-loss")
    per_field = element(dom, "figure", "plot-groups")
    assert "<svg" in per_field and all(field in per_field for field in ("name", "address", "email", "question"))
    assert "hours per million records" in element(dom, "p", "throughput-line")
    assert "<td" in element(dom, "table", "throughput")
    errors = element(dom, "table", "errors")
    assert "<del>" in errors and "<ins>" in errors

    shot = tmp_path / "report.png"
    chromium(f"--screenshot={shot}", "--window-size=1200,2400", page.as_uri())
    from PIL import Image

    with Image.open(shot) as image:
        assert image.size == (1200, 2400)
        assert image.convert("RGB").getcolors(maxcolors=64) is None  # far more than a blank page's few colours
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    shutil.copy(shot, ARTIFACTS / "report.png")


def test_markdown_report_has_the_side_by_side_table_throughput_and_training(evaluated_tiny_run):
    run_dir, _ = evaluated_tiny_run
    text = (run_dir / "report.md").read_text(encoding="utf-8")
    assert f"| metric | complaint-rules | {UNTUNED} | {few_shot_name(2)} | {TUNED} |" in text
    assert "| **field_exact** |" in text and "hours per million records" in text
    assert "- validation loss:" in text and "- validation field_exact:" in text


def test_classify_report_shows_a_confusion_matrix_per_system_and_label_names_as_text(tmp_path):
    labels = ["体育", "财经", "科技"]
    records = [Record(id=str(i), where=f"f:{i}", input="标题", output=gold) for i, gold in enumerate(["体育", "体育", "财经", "科技"])]
    run_dir = scored_run(tmp_path, "classify", records, {
        UNTUNED: ["体育", "我不知道", "体育", "科技"],
        TUNED: ["体育", "体育", "财经", "财经"],
    }, labels=labels)
    write_report(run_dir)
    page = (run_dir / "report.html").read_text(encoding="utf-8")
    tuned_matrix = element(page, "table", "confusion-1")
    rows = re.findall(r"<tr><th>(.*?)</th>(.*?)</tr>", tuned_matrix.split("<tbody>")[1])
    counts = {gold: [int(c) for c in re.findall(r">(\d+)</td>", cells)] for gold, cells in rows}
    assert counts == {"体育": [2, 0, 0, 0], "财经": [0, 1, 0, 0], "科技": [0, 1, 0, 0]}
    assert "(no label)" in element(page, "table", "confusion-0")
    assert all(f">{label}<" in element(page, "figure", "plot-groups") for label in labels)  # text, not paths
    assert "## Confusion matrices" in (run_dir / "report.md").read_text(encoding="utf-8")


def test_classify_report_draws_a_reliability_diagram_for_the_systems_with_probabilities(tmp_path):
    labels = ["体育", "财经"]
    records = [Record(id=str(i), where=f"f:{i}", input="标题", output=gold) for i, gold in enumerate(["体育", "财经"] * 3)]
    config = TaskConfig(name="report-calibration", kind="classify", labels=labels, data={"train": "x.jsonl"},
                        output_dir=tmp_path)
    scoring = build_task(config)
    sure = [{"体育": 0.95, "财经": 0.05}] * 6  # always 体育, sure of it: right half the time
    results = {UNTUNED: score_answers(scoring, UNTUNED, records, ["体育"] * 6, 0.5),  # generated: no probabilities
               TUNED: score_answers(scoring, TUNED, records, ["体育"] * 6, 0.5, probabilities=sure)}
    save_results(config.run_dir, config, scoring, records, results)
    write_report(config.run_dir)
    page = (config.run_dir / "report.html").read_text(encoding="utf-8")
    assert re.search(r"<th>ece</th><td[^>]*>– <span[^>]*></span></td><td[^>]*>0.450 ", element(page, "table", "scores"))
    diagram = element(page, "figure", "plot-reliability")
    assert "<svg" in diagram and f"{TUNED} 0.450" in diagram and UNTUNED not in diagram.split("<figcaption>")[1]
    assert re.search(r"<th>0.9-1.0</th><td[^>]*>6</td><td[^>]*>0.950</td><td[^>]*>0.500</td>",
                     element(page, "table", "calibration"))
    markdown = (config.run_dir / "report.md").read_text(encoding="utf-8")
    assert "## Calibration" in markdown and "| ece | – | 0.450 [" in markdown
    first = read_jsonl(config.run_dir / "predictions.jsonl")[0]
    assert first["probabilities"] == {TUNED: {"体育": 0.95, "财经": 0.05}}


def test_chat_report_puts_replies_before_and_after_tuning_side_by_side(tmp_path):
    records = [Record(id="1", where="f:1", input="今天天气如何", output="回娘娘，今日晴好。")]
    run_dir = scored_run(tmp_path, "chat", records, {UNTUNED: ["I am an AI assistant."], TUNED: ["回娘娘，今日晴。"]})
    write_report(run_dir)
    page = (run_dir / "report.html").read_text(encoding="utf-8")
    samples = element(page, "table", "samples")
    assert "I am an AI assistant." in samples and "回娘娘，今日晴。" in samples and "今天天气如何" in samples
    assert "<th>rouge_l</th>" in element(page, "table", "scores")
    lengths = element(page, "table", "lengths")  # characters per reply: 21 untuned, 8 fine-tuned, 9 reference
    assert re.search(r"<th>untuned</th><td[^>]*>21</td>", lengths) and re.search(r"<th>reference</th><td[^>]*>9</td>", lengths)
    assert "No training log" in page


def test_error_diff_marks_only_the_characters_that_differ():
    assert _char_diff('{"name": "李雷"}', '{"name": "李蕾"}') == "{&quot;name&quot;: &quot;李<del>雷</del><ins>蕾</ins>&quot;}"
    assert _char_diff("<b>", "<b>") == "&lt;b&gt;"
