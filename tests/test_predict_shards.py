"""The shards of `predict --ray`, without Ray: Parquet rows read back as the JSONL rows, whole files only, a rerun's
numbering across both formats, and the output checks for an input named by URL."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import make_run_dir, write_jsonl

from smalltune.errors import OutputError
from smalltune.inference.predict_ray import (RayPlan, _check_out_dir, _shard_writer, predict_on_ray, read_shard,
                                             shards, write_parquet_shard)
from smalltune.io import json_line

pytest.importorskip("pyarrow.parquet")

ROWS = [  # a row of each shape `predict` writes
    {"id": "e1", "answer": '{"name": "张三"}', "result": {"name": "张三", "tags": ["a", 1]}, "error": None,
     "input_shortened": False},
    {"id": "e2", "answer": None, "result": None, "error": "too long", "input_shortened": True},
    {"id": "c1", "answer": "投诉", "result": "投诉", "error": None, "input_shortened": False,
     "scores": {"投诉": 0.75, "咨询": 0.25}},
    {"id": "l1", "answer": "[1, 2]", "result": [1, 2], "error": None, "input_shortened": False},
    {"id": "bad-3", "answer": None, "result": None, "error": "invalid record: missing 'input'",
     "input_shortened": False, "where": "in.jsonl:3"},
]


def test_parquet_shard_rows_read_back_as_the_jsonl_rows(tmp_path: Path) -> None:
    import pyarrow.parquet as pq

    path = tmp_path / "part-00000-00000.parquet"
    write_parquet_shard(path, ROWS)
    assert read_shard(path) == ROWS
    table = pq.read_table(path)  # one schema for every shard: result and scores as JSON text, null where absent
    assert table.column_names == ["id", "answer", "result", "error", "input_shortened", "scores", "where"]
    assert table.column("result").to_pylist()[:2] == ['{"name": "张三", "tags": ["a", 1]}', None]
    assert [p.name for p in tmp_path.iterdir()] == [path.name]  # no temporary file left behind


def test_a_rerun_writes_new_shards_and_reads_both_formats(tmp_path: Path) -> None:
    with _shard_writer(tmp_path, "parquet") as write:
        write([json_line(row) for row in ROWS[:2]])
        write([json_line(ROWS[2])])
    with _shard_writer(tmp_path, "jsonl") as write:
        write([json_line(ROWS[3])])
    (tmp_path / ".part-00000-00002.parquet.x1y2.tmp").write_bytes(b"PAR1 cut short")  # a killed driver's write
    with _shard_writer(tmp_path, "parquet") as write:
        write([json_line(ROWS[4])])
    assert [p.name for p in shards(tmp_path)] == [
        "part-00000-00000.parquet", "part-00000-00001.parquet", "part-00001.jsonl", "part-00002-00000.parquet"]
    assert [row for shard in shards(tmp_path) for row in read_shard(shard)] == ROWS
    assert not list(tmp_path.glob(".*"))  # the leftover temporary file is gone
    _check_out_dir(tmp_path, tmp_path.parent / "elsewhere.jsonl")  # a folder of shards is an earlier output


def test_a_torn_jsonl_line_is_cut_and_a_foreign_parquet_file_is_refused(tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    torn = tmp_path / "part-00000.jsonl"
    torn.write_text(json_line(ROWS[0]) + json_line(ROWS[1])[:20], encoding="utf-8")
    assert read_shard(torn) == ROWS[:1] and torn.read_text(encoding="utf-8") == json_line(ROWS[0])
    foreign = tmp_path / "part-00001-00000.parquet"
    pq.write_table(pa.Table.from_pylist([{"id": "x", "text": "mine"}]), foreign)
    with pytest.raises(OutputError, match=r"part-00001-00000\.parquet: not a shard `predict --ray` wrote"):
        read_shard(foreign)
    foreign.write_bytes(b"not parquet")
    with pytest.raises(OutputError, match="not a shard"):
        read_shard(foreign)


def test_an_input_named_by_url_is_checked_as_its_local_folder(tmp_path: Path, tiny_qwen3_dir) -> None:
    run_dir = make_run_dir(tmp_path, tiny_qwen3_dir)
    folder = tmp_path / "inbox"
    write_jsonl(folder / "a.jsonl", [{"id": "a1", "input": "张三"}])
    plan = RayPlan(address="127.0.0.1:1")  # no cluster there: each case must fail before joining one
    with pytest.raises(OutputError, match="would be read as input"):
        predict_on_ray(run_dir, folder.as_uri(), folder / "answers", plan)
    with pytest.raises(OutputError, match="shard format 'csv': use one of jsonl, parquet"):
        predict_on_ray(run_dir, folder.as_uri(), tmp_path / "out", plan, shard_format="csv")
    assert not (tmp_path / "out").exists() and json.loads((folder / "a.jsonl").read_text())["id"] == "a1"
