"""kill -9 at seeded random moments of `predict`, `label` and `train`, then the same command again: nothing lost,
nothing doubled.

Each command runs as a user runs it (`python -m smalltune.cli ...` in a subprocess, the tiny model, the scripted
teacher on 127.0.0.1) and is killed with SIGKILL while it works; the rerun finishes the job. The finished files
must equal an uninterrupted run's.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import torch
from conftest import make_run_dir, write_jsonl
from safetensors.torch import load_file
from teacher_server import Script, TeacherServer
from test_label import answers_of, complaints, write_task

from smalltune.config import TaskConfig, load_config, save_config
from smalltune.inference.predict import predict_file
from smalltune.labelling.label import Outputs, cache_key
from smalltune.recipes.synth.complaints import FIELDS, generate_complaints
from smalltune.runs import RunDir
from smalltune.training.run import last_checkpoint, train

KILLS = 3
# One CPU thread per process: on a busy machine a process's two threads wait on each other (ten times slower),
# and the uninterrupted run in this process then computes exactly as the killed ones do.
ONE_THREAD = {**os.environ, "OMP_NUM_THREADS": "1"}


def cli(*args: object) -> list[str]:
    return [sys.executable, "-m", "smalltune.cli", *map(str, args)]


def tail(log: Path) -> str:
    return log.read_text(encoding="utf-8", errors="replace")[-3000:]


def run_until_killed(command: list[str], due: Callable[[], bool], log: Path, after: float = 0.0,
                     timeout: float = 600) -> None:
    """Start `command` and SIGKILL it `after` seconds once `due()` holds; fails if it ends by itself before."""
    with log.open("ab") as output:
        process = subprocess.Popen(command, stdout=output, stderr=subprocess.STDOUT, env=ONE_THREAD)
    deadline = time.monotonic() + timeout
    try:
        while not due():
            ended = process.poll() is not None
            assert not ended and time.monotonic() < deadline, (
                f"{command[3]} {'ended' if ended else 'ran too long'} before it was killed:\n{tail(log)}")
            time.sleep(0.005)
        time.sleep(after)
    finally:
        os.kill(process.pid, signal.SIGKILL)
        process.wait()


def run_to_the_end(command: list[str], log: Path, timeout: float = 600) -> None:
    with log.open("ab") as output:
        finished = subprocess.run(command, stdout=output, stderr=subprocess.STDOUT, env=ONE_THREAD, timeout=timeout,
                                  check=False)
    assert finished.returncode == 0, tail(log)


def lines_in(path: Path) -> int:
    """Complete lines written so far (read only: the file is not repaired while a run writes it)."""
    return path.read_bytes().count(b"\n") if path.is_file() else 0


def has_lines(count: int, *paths: Path) -> Callable[[], bool]:
    """Whether the files hold `count` complete lines between them."""
    return lambda: sum(lines_in(path) for path in paths) >= count


def whole_rows(path: Path) -> list[dict]:
    """Every row of a finished JSON Lines file, which must end with a newline (no torn last line)."""
    text = path.read_text(encoding="utf-8")
    assert text == "" or text.endswith("\n"), f"{path.name} ends in a partial line"
    return [json.loads(line) for line in text.splitlines()]


def whole_rows_so_far(path: Path) -> list[dict]:
    """The complete lines of a JSON Lines file a killed run may have left with a torn last line."""
    if not path.is_file():
        return []
    raw = path.read_bytes()
    return [json.loads(line) for line in raw[: raw.rfind(b"\n") + 1].decode("utf-8").splitlines()]


def test_predict_killed_at_random_moments_answers_every_record_once_as_an_uninterrupted_run(
        tmp_path, tiny_qwen3_dir, one_thread):
    # batch_size 1: each answer is computed alone, so resuming (other batches) cannot change it by float noise;
    # the output is flushed every 4 answers
    run_dir = make_run_dir(tmp_path, tiny_qwen3_dir, infer={"batch_size": 1, "max_new_tokens": 8})
    _, test_rows = generate_complaints(n_train=0, n_test=48, seed=8)
    inputs = write_jsonl(tmp_path / "in.jsonl", [{"id": r["id"], "input": r["input"]} for r in test_rows])
    expected = tmp_path / "uninterrupted.jsonl"
    assert predict_file(run_dir, inputs, expected) == 48

    out, log, rng = tmp_path / "out.jsonl", tmp_path / "predict.log", random.Random(18)
    for _ in range(KILLS):
        due = has_lines(lines_in(out) + rng.randint(1, 10), out)
        run_until_killed(cli("predict", run_dir, inputs, "-o", out), due, log, after=rng.uniform(0, 0.3))
    assert lines_in(out) < 48, "the kills came too late to interrupt anything"
    run_to_the_end(cli("predict", run_dir, inputs, "-o", out), log)

    rows = whole_rows(out)
    assert sorted(Counter(r["id"] for r in rows).values()) == [1] * 48  # every record once: none lost, none twice
    assert {r["id"]: r for r in rows} == {r["id"]: r for r in whole_rows(expected)}


def test_label_killed_at_random_moments_decides_every_record_once_and_asks_nothing_twice(tmp_path):
    rows = complaints(60, seed=4)
    gold = {r["id"]: r["output"] for r in rows}
    always_invalid = {rows[i]["id"] for i in (5, 23, 41)}
    # every answer about these texts is unusable: each ends in the rejects, however many questions a kill cuts off
    faults = {r["input"]: ["invalid"] * 8 for r in rows if r["id"] in always_invalid}
    faults.update({rows[i]["input"]: ["invalid"] for i in (7, 30)})  # repaired when asked again with the reason
    id_of = {r["input"]: r["id"] for r in rows}
    with TeacherServer(Script(answers_of(rows), faults, delay=0.08)) as teacher:
        # a timeout far above the teacher's delay: on a busy machine no request is retried, so each is asked once a run
        task_file, raw = write_task(tmp_path, rows, teacher.url, concurrency=4, timeout=60)
        out, log, rng = tmp_path / "labelled.jsonl", tmp_path / "label.log", random.Random(18)
        outputs = Outputs(out)
        command = cli("label", task_file, "--input", raw, "--out", out)

        runs: list[tuple[set[str], list]] = []  # per run: the keys cached before it, and the requests it sent
        for kill in range(KILLS + 1):
            cached, asked_before = {row["key"] for row in whole_rows_so_far(outputs.cache)}, len(teacher.log)
            if kill < KILLS:
                decided = lines_in(outputs.labelled) + lines_in(outputs.rejects)
                due = has_lines(decided + rng.randint(2, 12), outputs.labelled, outputs.rejects)
                run_until_killed(command, due, log, after=rng.uniform(0, 0.1))
            else:
                run_to_the_end(command, log)
            runs.append((cached, teacher.log[asked_before:]))

    labelled, rejects = whole_rows(outputs.labelled), whole_rows(outputs.rejects)
    assert sorted(Counter(r["id"] for r in labelled + rejects).values()) == [1] * 60
    assert {r["id"]: r["output"] for r in labelled} == {i: gold[i] for i in gold if i not in always_invalid}
    assert {r["id"] for r in rejects} == always_invalid
    for cached, asked in runs:  # a question whose answer was cached is never sent again, nor twice in one run
        keys = [cache_key(id_of[e.text], "teacher-test", e.messages) for e in asked]
        assert not cached & set(keys) and len(set(keys)) == len(keys)
    cache = Counter(row["key"] for row in whole_rows(outputs.cache))
    assert set(cache.values()) == {1}
    summary = json.loads(outputs.summary.read_text(encoding="utf-8"))
    assert (summary["accepted"] + summary["repaired"], summary["rejected"], summary["unlabelled"]) == (57, 3, 0)


def tiny_training(root: Path, model_dir: Path) -> TaskConfig:
    """8 steps (2 epochs of 4), a checkpoint after each."""
    rows, _ = generate_complaints(n_train=16, n_test=0, seed=7)
    return TaskConfig(
        name="kill-train", kind="extract", fields=FIELDS,
        data={"train": write_jsonl(root.parent / "train.jsonl", rows), "validation_share": 0, "test_share": 0},
        model={"name": str(model_dir), "max_length": 256, "dtype": "float32"},
        train={"epochs": 2, "batch_size": 4, "learning_rate": 5e-3, "logging_steps": 1, "save_steps": 1,
               "report_to": "none"},
        output_dir=root,
    )


def losses(run_dir: Path) -> dict[int, float]:
    """The training loss of each step, from the run's summary (the trainer's history)."""
    history = json.loads((run_dir / "train_summary.json").read_text(encoding="utf-8"))["history"]
    return {h["step"]: h["loss"] for h in history if "loss" in h}


def complete_checkpoints(run_dir: Path) -> list[int]:
    states = (run_dir / "checkpoints").glob("checkpoint-*/trainer_state.json")
    return sorted(int(state.parent.name.split("-")[1]) for state in states)


def logged_steps(run_dir: Path) -> set[int]:
    return {row["step"] for row in whole_rows_so_far(run_dir / "train_log.jsonl") if "loss" in row}


def test_train_killed_after_checkpoints_resumes_with_the_same_losses_and_adapter(tmp_path, tiny_qwen3_dir, one_thread):
    expected_run = train(tiny_training(tmp_path / "uninterrupted", tiny_qwen3_dir))
    expected = losses(expected_run)
    assert sorted(expected) == list(range(1, 9))

    config = tiny_training(tmp_path / "killed", tiny_qwen3_dir)
    task_file, log, rng = tmp_path / "task.yaml", tmp_path / "train.log", random.Random(18)
    save_config(config, task_file)
    run_dir = config.run_dir
    checkpoint = run_dir / "checkpoints" / f"checkpoint-{rng.randint(1, 3)}" / "trainer_state.json"
    cut_short = run_dir / "checkpoints" / f"checkpoint-{rng.randint(6, 7)}"
    kills = [  # right after a checkpoint of the first epoch; in the second, as soon as a checkpoint is being written
        (cli("train", task_file), checkpoint.is_file),
        (cli("train", task_file, "--resume"), cut_short.is_dir),
    ]
    resumed_from: list[int] = []
    for command, due in kills:
        run_until_killed(command, due, log)
        resumed_from.append(complete_checkpoints(run_dir)[-1])
    assert resumed_from[0] < 4 and 4 < resumed_from[1] < 8  # the reruns start inside the first, then the second epoch
    killed_at = time.time()
    train(load_config(task_file), resume=True)  # what `train --resume` runs

    got = losses(run_dir)
    assert sorted(got) == list(range(1, 9))
    for step, loss in expected.items():
        assert abs(got[step] - loss) < 1e-6, f"step {step}: {got[step]} after resuming, {loss} uninterrupted"
    # the train log holds each step once; the last run logged the steps after its checkpoint only
    logged = [row for row in whole_rows(run_dir / "train_log.jsonl") if "loss" in row]
    assert [row["step"] for row in logged] == list(range(1, 9))
    assert min(row["step"] for row in logged if row["time"] > killed_at) == resumed_from[-1] + 1
    want, have = (load_file(run / "adapter" / "adapter_model.safetensors") for run in (expected_run, run_dir))
    assert want.keys() == have.keys()
    for name in want:
        torch.testing.assert_close(have[name], want[name], atol=1e-6, rtol=1e-5)


def test_resume_passes_over_a_checkpoint_that_a_kill_cut_short(tmp_path):
    run = RunDir(tmp_path / "run")
    for step in (9, 10):
        (run.checkpoints / f"checkpoint-{step}").mkdir(parents=True)
        (run.checkpoints / f"checkpoint-{step}" / "trainer_state.json").write_text("{}", encoding="utf-8")
    (run.checkpoints / "checkpoint-11").mkdir()  # killed while written: its trainer state (saved last) is missing
    (run.checkpoints / "checkpoint-11" / "adapter_model.safetensors").write_bytes(b"")
    assert last_checkpoint(run) == run.checkpoints / "checkpoint-10"  # the newest whole one, by step number
    assert last_checkpoint(RunDir(tmp_path / "new")) is None
