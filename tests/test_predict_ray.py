"""`smalltune predict --ray` on a real local Ray cluster (a head and a worker node on 127.0.0.1): the same rows as
`predict`, every record exactly once across a killed worker and a killed driver (JSONL shards from a local folder,
Parquet shards from the folder's file:// URL), and clear errors before Ray starts.
"""

from __future__ import annotations

import csv
import json
import os
import signal
from collections import Counter
from pathlib import Path

import pytest
from conftest import make_run_dir, write_jsonl
from test_kill_resume import cli, has_lines, lines_in, run_to_the_end, run_until_killed, whole_rows

from smalltune.errors import DataError, OutputError
from smalltune.inference.predict import predict_file
from smalltune.inference.predict_ray import RayPlan, predict_on_ray, read_shard, shards
from smalltune.recipes.synth.complaints import generate_complaints

ray = pytest.importorskip("ray", reason="predict --ray needs the ray extra: pip install 'smalltune[ray]'")

RECORDS = 240


@pytest.fixture(scope="module")
def cluster():
    """A head node and a worker node, one CPU each, as separate raylets on 127.0.0.1."""
    from ray.cluster_utils import Cluster

    local = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
    local.add_node(num_cpus=1)
    local.wait_for_nodes()
    yield local
    local.shutdown()


@pytest.fixture(scope="module")
def answered_here(tmp_path_factory, tiny_qwen3_dir) -> tuple[Path, Path, list[dict]]:
    """A run (batch_size 1: each answer computed alone, so no batching by Ray or by a rerun changes it by float
    noise), a folder of records, and the rows single-process `predict` writes for them on one torch thread."""
    import torch

    root = tmp_path_factory.mktemp("ray-predict")
    run_dir = make_run_dir(root, tiny_qwen3_dir, infer={"batch_size": 1, "max_new_tokens": 8})
    folder, files = input_folder(root)
    expected, threads = root / "single-process.jsonl", torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for path in files:
            predict_file(run_dir, path, expected)
    finally:
        torch.set_num_threads(threads)
    return run_dir, folder, whole_rows(expected)


def input_folder(root: Path) -> tuple[Path, list[Path]]:
    """A folder of records to answer: a JSONL file (its last line not a record) and a CSV file."""
    _, rows = generate_complaints(n_train=0, n_test=RECORDS, seed=21)
    folder = root / "inbox"
    half = RECORDS // 2
    first = write_jsonl(folder / "a.jsonl", [{"id": r["id"], "input": r["input"]} for r in rows[:half]])
    with first.open("a", encoding="utf-8") as handle:
        handle.write(json.dumps({"id": "no-input"}) + "\n")
    second = folder / "b.csv"
    with second.open("w", encoding="utf-8", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=["id", "input"])
        writer.writeheader()
        writer.writerows({"id": r["id"], "input": r["input"]} for r in rows[half:])
    return folder, [first, second]


def rows_of(out_dir: Path) -> list[dict]:
    return [row for shard in shards(out_dir) for row in whole_rows(shard)]


def answering_actors() -> list[int]:
    """The process ids of the Ray actors holding an engine (their process title names the class)."""
    pids = []
    for entry in Path("/proc").iterdir():
        try:
            title = (entry / "cmdline").read_bytes()
        except (OSError, ValueError):
            continue
        if entry.name.isdigit() and b"_Answerer" in title:
            pids.append(int(entry.name))
    return pids


def test_ray_predict_answers_every_record_once_as_predict_does_across_a_killed_worker_and_driver(
        tmp_path, answered_here, cluster):
    run_dir, folder, expected = answered_here
    out, log = tmp_path / "out", tmp_path / "predict.log"
    command = cli("predict", run_dir, folder, "-o", out, "--ray", "--ray-address", cluster.address, "--workers", 2)
    shard = out / "part-00000.jsonl"

    def worker_killed_then_more_answers() -> bool:
        if not has_lines(8, shard)():
            return False
        if not getattr(worker_killed_then_more_answers, "victim", None):
            victim = answering_actors()[0]
            os.kill(victim, signal.SIGKILL)
            worker_killed_then_more_answers.victim, worker_killed_then_more_answers.at = victim, lines_in(shard)
        return lines_in(shard) >= worker_killed_then_more_answers.at + 8

    run_until_killed(command, worker_killed_then_more_answers, log, timeout=300)
    assert lines_in(shard) < RECORDS + 1, "the driver was killed too late to interrupt anything"
    run_to_the_end(command, log, timeout=300)

    rows = rows_of(out)
    assert len(shards(out)) == 2  # the rerun wrote a shard of its own
    assert sorted(Counter(r["id"] for r in rows).values()) == [1] * (RECORDS + 1)  # none lost, none twice
    assert {r["id"]: r for r in rows} == {r["id"]: r for r in expected}
    assert next(r for r in rows if r["id"] == "no-input")["where"].endswith("a.jsonl:121")


def test_ray_predict_into_parquet_shards_from_a_url_answers_every_record_once_across_a_killed_driver(
        tmp_path, answered_here, cluster):
    run_dir, folder, expected = answered_here
    out, log = tmp_path / "out", tmp_path / "predict.log"
    command = cli("predict", run_dir, folder.as_uri(), "-o", out, "--ray", "--ray-address", cluster.address,
                  "--workers", 2, "--shard-format", "parquet")
    run_until_killed(command, lambda: len(list(out.glob("part-*.parquet"))) >= 4, log, timeout=300)
    assert len(shards(out)) < 17, "the driver was killed too late to interrupt anything"  # 16 blocks + invalid rows
    run_to_the_end(command, log, timeout=300)

    rows = [row for shard in shards(out) for row in read_shard(shard)]
    assert {p.name.split("-")[1] for p in shards(out)} == {"00000", "00001"} and not list(out.glob(".*"))
    assert sorted(Counter(r["id"] for r in rows).values()) == [1] * (RECORDS + 1)  # none lost, none twice
    assert next(r for r in rows if r["id"] == "no-input")["where"] == f"{folder.as_uri()}/a.jsonl:121"
    drop_where = lambda row: {k: v for k, v in row.items() if k != "where"}  # noqa: E731  (the URL, not the path)
    assert {r["id"]: drop_where(r) for r in rows} == {r["id"]: drop_where(r) for r in expected}


def test_ray_predict_checks_its_input_and_output_before_ray_starts(tmp_path, tiny_qwen3_dir):
    run_dir = make_run_dir(tmp_path, tiny_qwen3_dir)
    folder, _ = input_folder(tmp_path)
    plan = RayPlan(address="127.0.0.1:1")  # no cluster there: each case must fail before joining one

    with pytest.raises(OutputError, match="is a file; with --ray the output is a folder"):
        predict_on_ray(run_dir, folder, folder / "a.jsonl", plan)
    with pytest.raises(OutputError, match="would be read as input"):
        predict_on_ray(run_dir, folder, folder / "answers", plan)
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    (mixed / "notes.txt").write_text("mine", encoding="utf-8")
    with pytest.raises(OutputError, match="holds notes.txt, which `predict --ray` did not write"):
        predict_on_ray(run_dir, folder, mixed, plan)
    with pytest.raises(DataError, match="a folder with no data files"):
        predict_on_ray(run_dir, mixed, tmp_path / "out", plan)
    write_jsonl(folder / "c.jsonl", [{"id": "test-0001", "input": "同一个编号"}])
    with pytest.raises(DataError, match=r"c\.jsonl:1: id 'test-0001' is also the id of .*a\.jsonl:1"):
        predict_on_ray(run_dir, folder, tmp_path / "out", plan)
    assert (mixed / "notes.txt").read_text(encoding="utf-8") == "mine" and not (tmp_path / "out").exists()
