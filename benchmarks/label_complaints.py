"""`smalltune label` on synthetic complaints against the scripted test teacher, killed once and resumed.

    python benchmarks/label_complaints.py [--records 250] [--kill-after 100] [--work-dir DIR]

The teacher (tests/teacher_server.py, real HTTP on 127.0.0.1) knows the right answer for every text and
misbehaves on purpose for a seeded share of them: 429s, 500s, answers slower than the client's timeout,
invalid JSON and made-up values, once (the run must retry or repair) or twice (the record must be
rejected). The CLI is killed with SIGKILL after --kill-after records and started again. Prints the counts,
the requests the teacher saw beyond the ones the faults called for, and whether every record was
labelled exactly once with the right answer.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from teacher_server import Script, TeacherServer  # noqa: E402

from smalltune.io import read_appended  # noqa: E402
from smalltune.labelling.label import REJECT_KEYS, Outputs  # noqa: E402
from smalltune.recipes.synth.complaints import generate_complaints  # noqa: E402

# share of texts -> scripted behaviours of their first requests
FAULTS = [(0.05, ["429"]), (0.03, ["500", "500"]), (0.02, ["slow"]), (0.05, ["invalid"]), (0.03, ["ungrounded"]),
          (0.02, ["invalid", "invalid"]), (0.02, ["ungrounded", "ungrounded"])]
LABELLED_KEYS = ("id", "label_status")  # the rows of an alpaca labelled file
TEACHER = {"model": "teacher-test", "api_key_env": None, "concurrency": 8, "timeout": 0.5, "max_retries": 4,
           "backoff": 0.2, "max_backoff": 2.0, "price_input": 0.5, "price_output": 2.0}


def scripted_faults(texts: list[str], seed: int) -> dict[str, list[str]]:
    rng = random.Random(seed)
    faults = {}
    for text in texts:
        draw, edge = rng.random(), 0.0
        for share, behaviours in FAULTS:
            edge += share
            if draw < edge:
                faults[text] = behaviours
                break
    return faults


def expected_requests(behaviours: list[str]) -> int:
    """Requests a text needs: one per transport fault, one per bad answer (at most 2 answers), one good one."""
    transport = sum(b in ("429", "500", "slow") for b in behaviours)
    bad = sum(b in ("invalid", "ungrounded") for b in behaviours)
    return transport + (2 if bad >= 2 else bad + 1)


def label_command(task_file: Path, raw: Path, out: Path, url: str) -> list[str]:
    return [sys.executable, "-m", "smalltune.cli", "label", str(task_file), "--input", str(raw), "--out", str(out),
            "--base-url", url]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--records", type=int, default=250)
    parser.add_argument("--kill-after", type=int, default=100)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--work-dir", type=Path, default=None)
    args = parser.parse_args()
    work = args.work_dir or Path(tempfile.mkdtemp(prefix="label-bench-"))
    work.mkdir(parents=True, exist_ok=True)

    train, test = generate_complaints(n_train=args.records - args.records // 5, n_test=args.records // 5, seed=args.seed)
    rows = train + test
    raw = work / "raw.jsonl"
    raw.write_text("".join(json.dumps({"id": r["id"], "input": r["input"]}, ensure_ascii=False) + "\n" for r in rows),
                   encoding="utf-8")
    task = yaml.safe_load((Path(__file__).resolve().parents[1] / "src/smalltune/recipes/complaints.yaml").read_text())
    task.update(data={"train": "labelled.jsonl", "format": "alpaca"}, teacher=TEACHER)
    task_file = work / "task.yaml"
    task_file.write_text(yaml.safe_dump(task, allow_unicode=True, sort_keys=False), encoding="utf-8")
    out = work / "labelled.jsonl"
    for stale in (out, Outputs(out).rejects, Outputs(out).cache, Outputs(out).summary):
        stale.unlink(missing_ok=True)

    faults = scripted_faults([r["input"] for r in rows], args.seed)
    answers = {r["input"]: json.dumps(r["output"], ensure_ascii=False) for r in rows}
    with TeacherServer(Script(answers, faults, delay=0.02)) as teacher:
        started = time.perf_counter()
        killed = subprocess.Popen(label_command(task_file, raw, out, teacher.url), stdout=subprocess.DEVNULL,
                                  stderr=subprocess.DEVNULL)
        while not out.is_file() or out.read_text(encoding="utf-8").count("\n") < args.kill_after:
            if killed.poll() is not None:
                sys.exit("the first run ended before it could be killed: raise --records or lower --kill-after")
            time.sleep(0.005)
        os.kill(killed.pid, signal.SIGKILL)
        killed.wait()
        decided_at_kill = len(read_appended(out, LABELLED_KEYS)) + len(read_appended(Outputs(out).rejects, REJECT_KEYS))
        resumed = subprocess.run(label_command(task_file, raw, out, teacher.url), capture_output=True, text=True)
        seconds = time.perf_counter() - started
    print(resumed.stdout)

    summary = json.loads(Outputs(out).summary.read_text(encoding="utf-8"))
    labelled, rejects = read_appended(out, LABELLED_KEYS), read_appended(Outputs(out).rejects, REJECT_KEYS)
    ids = Counter(row["id"] for row in labelled + rejects)
    gold = {r["id"]: r["output"] for r in rows}
    asked = Counter(entry.text for entry in teacher.log)
    extra = sum(max(0, asked[r["input"]] - expected_requests(faults.get(r["input"], []))) for r in rows)
    scripted_rejects = sum(1 for b in faults.values() if sum(x in ("invalid", "ungrounded") for x in b) >= 2)
    table = {
        "raw records": len(rows),
        "texts with scripted faults": len(faults),
        "decided when killed (SIGKILL)": decided_at_kill,
        "accepted / repaired / rejected / unlabelled":
            f"{summary['accepted']} / {summary['repaired']} / {summary['rejected']} / {summary['unlabelled']}",
        "rejects scripted (bad twice)": scripted_rejects,
        "every record exactly once": len(ids) == len(rows) and max(ids.values()) == 1,
        "accepted labels equal to the gold": f"{sum(row['output'] == gold[row['id']] for row in labelled)}/{len(labelled)}",
        "requests the teacher saw": len(teacher.log),
        "requests beyond what the faults need (in flight at the kill)": extra,
        "resumed run: requests, from cache, retries":
            f"{summary['this_run']['requests']}, {summary['this_run']['from_cache']}, {summary['this_run']['retries']}",
        "wall time, both runs (s)": round(seconds, 1),
        "resumed run exit code": resumed.returncode,
    }
    width = max(map(len, table))
    for key, value in table.items():
        print(f"{key:<{width}}  {value}")
    print(f"files in {work}")


if __name__ == "__main__":
    main()
