"""Row (d) of the batch inference benchmark: the same run and held-out records through the vLLM engine.

Runs in vLLM's own environment (`make setup-vllm`), as predict_speed.py's rows (a)-(c) run in the main one.
The answers are constrained and grounded as in row (c), the task's default. Give the rows that
predict_speed.py wrote with --json to print all four rows in one table, with the speed-up over the seed loop:

    python benchmarks/predict_speed.py runs/demo/complaints --records 64 --json speed.json
    .venv-vllm/bin/python benchmarks/predict_vllm.py runs/demo/complaints --records 64 --baseline speed.json

Seconds count answering only, not starting the engine (vLLM's start is printed apart). On a CPU with
few cores set VLLM_CPU_NUM_OF_RESERVED_CPU=0, or vLLM keeps one core away from the model.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from predict_speed import row
from rich.console import Console
from rich.table import Table

from smalltune.data.records import load_splits
from smalltune.io import atomic_write_jsonl
from smalltune.inference.vllm_engine import VllmEngine

COLUMNS = ("system", "records/s", "x seed", "tokens/s", "valid JSON", "field exact", "record exact", "seconds")


def table(rows: list[dict], title: str) -> Table:
    """predict_speed.py's table; "x seed" is left blank without the seed loop's row."""
    seed = next((r["records_per_s"] for r in rows if r["system"].startswith("(a)")), None)
    out = Table(title=title)
    for column in COLUMNS:
        out.add_column(column, justify="left" if column == "system" else "right")
    for r in rows:
        speedup = f"{r['records_per_s'] / seed:.1f}x" if seed else "-"
        out.add_row(r["system"], f"{r['records_per_s']:.2f}", speedup, f"{r['tokens_per_s']:.1f}",
                    f"{r['json_valid']:.3f}", f"{r['field_exact']:.3f}", f"{r['record_exact']:.3f}", f"{r['seconds']:.0f}")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_dir", type=Path, help="a trained extract run directory (e.g. runs/demo/complaints)")
    parser.add_argument("--records", type=int, default=64, help="held-out records to answer")
    parser.add_argument("--baseline", type=Path, help="rows (a)-(c) written by predict_speed.py --json")
    parser.add_argument("--json", type=Path, help="also write the rows here")
    parser.add_argument("--answers", type=Path, help="also write each record's answer here (JSONL: id, answer)")
    args = parser.parse_args()

    started = time.perf_counter()
    engine = VllmEngine.from_run(args.run_dir)
    start_seconds = time.perf_counter() - started
    records = load_splits(engine.config.data, check=engine.task.check).test[: args.records]
    engine.generate(records[:1])  # the first request loads the adapter and compiles a grammar: not counted
    rows = json.loads(args.baseline.read_text(encoding="utf-8")) if args.baseline else []
    generation = engine.generate(records)
    rows.append(row("(d) vLLM, constrained", engine, records, generation))

    Console().print(table(rows, f"batch inference, {len(records)} held-out records, {args.run_dir}"))
    print(f"vLLM engine start: {start_seconds:.0f} s")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2) + "\n", encoding="utf-8")
    if args.answers:
        atomic_write_jsonl(args.answers, [{"id": r.id, "answer": t} for r, t in zip(records, generation.texts)])


if __name__ == "__main__":  # vLLM starts its workers as processes that import this module
    main()
