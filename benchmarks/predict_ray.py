"""What Ray costs: `smalltune predict` against `smalltune predict --ray` on the same records, as whole commands.

Each system is the CLI a user runs (start-up, model load and all), on the same run and the same records:
  (a) predict, one process, all the machine's threads
  (b) predict --ray, 1 worker holding all the threads (the same engine behind Ray: the difference is Ray's cost)
  (c) predict --ray, N workers of 1 thread each (one model copy per core)
Each runs on the first --small and the first --records held-out records, so a command's time splits into what
it pays once (start-up and model load: the intercept) and what it pays per record (the slope). Ray's cost per
record is (b)'s slope less (a)'s, beside (a)'s slope (the engine's time per record). The answers of (b) are
compared with (a)'s, record by record.

    python benchmarks/predict_ray.py runs/demo/complaints --small 32 --records 160

"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

from smalltune.io import atomic_write_jsonl, read_jsonl
from smalltune.runs import RunDir

SMALLTUNE = str(Path(sys.executable).parent / "smalltune")


def write_input(run_dir: Path, count: int, folder: Path, name: str) -> Path:
    """The first `count` records of the run's held-out file (data.test), as a JSONL file."""
    test = RunDir.load(run_dir).config().data.test
    if test is None or test.suffix != ".jsonl":
        raise SystemExit(f"{run_dir}: the benchmark reads the run's data.test, a .jsonl file")
    path = folder / name
    atomic_write_jsonl(path, read_jsonl(test)[:count])
    return path


def timed(command: list[str]) -> float:
    """Seconds the command took; it must succeed."""
    started = time.perf_counter()
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - started


def answers(path: Path) -> dict[str, str]:
    """id -> answer of a predict output file, or of every shard of a --ray output folder."""
    files = sorted(path.glob("part-*.jsonl")) if path.is_dir() else [path]
    return {row["id"]: row["answer"] for file in files for row in read_jsonl(file)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_dir", type=Path, help="a trained run directory (e.g. runs/demo/complaints)")
    parser.add_argument("--small", type=int, default=32, help="held-out records of the short run")
    parser.add_argument("--records", type=int, default=160, help="held-out records of the long run")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 2, help="workers of row (c); 0 leaves (c) out")
    parser.add_argument("--json", type=Path, help="also write the rows here")
    args = parser.parse_args()

    threads = os.cpu_count() or 2
    folder = Path(tempfile.mkdtemp(prefix="predict-ray-"))
    systems = {
        "(a) predict": [],
        "(b) predict --ray, 1 worker": ["--ray", "--workers", "1", "--threads-per-worker", str(threads)],
        f"(c) predict --ray, {args.workers} workers": ["--ray", "--workers", str(args.workers)],
    }
    if args.workers == 0:
        systems.popitem()
    seconds: dict[tuple[str, int], float] = {}
    for count in (args.small, args.records):
        source = write_input(args.run_dir, count, folder, f"records-{count}.jsonl")
        for index, (name, extra) in enumerate(systems.items()):
            out = folder / f"out-{index}-{count}" if extra else folder / f"out-{index}-{count}.jsonl"
            seconds[name, count] = timed([SMALLTUNE, "predict", str(args.run_dir), str(source), "-o", str(out), *extra])
            print(f"{name}, {count} records: {seconds[name, count]:.1f} s", flush=True)
    single = answers(folder / f"out-0-{args.records}.jsonl")
    same = sum(single[i] == answer for i, answer in answers(folder / f"out-1-{args.records}").items())

    rows = []
    for name in systems:
        slope = (seconds[name, args.records] - seconds[name, args.small]) / (args.records - args.small)
        rows.append({"system": name, "seconds": seconds[name, args.records], "once_s": seconds[name, args.small] - slope * args.small,
                     "s_per_record": slope, "records_per_s": args.records / seconds[name, args.records]})
    engine = rows[0]["s_per_record"]
    table = Table(title=f"predict vs predict --ray, {args.run_dir}: {args.small} and {args.records} held-out records; "
                        f"(b)'s answers equal to (a)'s: {same}/{len(single)}")
    for column in ("system", f"seconds, {args.records} records", "records/s", "paid once (s)", "s per record",
                   "per record over (a)", "over (a), share of (a)'s"):
        table.add_column(column, justify="left" if column == "system" else "right")
    for r in rows:
        r["over_single"] = r["s_per_record"] - engine
        table.add_row(r["system"], f"{r['seconds']:.1f}", f"{r['records_per_s']:.2f}", f"{r['once_s']:.1f}",
                      f"{r['s_per_record']:.3f}", f"{r['over_single']:+.3f}", f"{r['over_single'] / engine:+.1%}")
    Console(width=160).print(table)
    if args.json:
        args.json.write_text(json.dumps({"rows": rows, "same_answers": same, "records": len(single)}, indent=2) + "\n",
                             encoding="utf-8")
    shutil.rmtree(folder)


if __name__ == "__main__":
    main()
