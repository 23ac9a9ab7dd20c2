"""Batch inference benchmark: the seed's one-prompt-at-a-time loop against smalltune's engine.

Same fine-tuned model, same held-out records, same prompts, one process:
  (a) the seed loop: one prompt at a time, generate(max_length=2500, do_sample=True, top_k=1)
  (b) smalltune predict, unconstrained (adapter merged, length-sorted batches, left padding, greedy, stop at end of turn)
  (c) smalltune predict, constrained to the task's JSON with grounded values (the default)
Row (d), the vLLM engine, runs in its own environment: benchmarks/predict_vllm.py.

    python benchmarks/predict_speed.py runs/demo/complaints --records 64

The seed loop is slow (one sequence at a time), so it answers only the first --seed-records of the records;
its records/s is a per-record rate and directly comparable.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table

from smalltune.config import TaskConfig
from smalltune.data.records import Record, load_splits
from smalltune.formatting import prompt_ids
from smalltune.inference.engine import Generation
from smalltune.inference.transformers_engine import TransformersEngine as Engine


def seed_loop(engine: Engine, records: list[Record]) -> Generation:
    """The seed recipe's inference: each record alone, sampling with top_k=1, up to 2,500 tokens in all."""
    started, texts, tokens, lengths = time.perf_counter(), [], 0, []
    config = engine.config
    for record in records:
        ids, _ = prompt_ids(engine.tokenizer, engine.task, record, config.model.max_length, config.model.enable_thinking)
        with torch.inference_mode():
            out = engine.model.generate(
                input_ids=torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                max_length=2500, do_sample=True, top_k=1, pad_token_id=engine.tokenizer.pad_token_id,
            )
        new = out[0, len(ids):]
        tokens += len(new)
        lengths.append(len(ids))
        texts.append(engine.tokenizer.decode(new, skip_special_tokens=True))
    return Generation(texts, time.perf_counter() - started, tokens, lengths, [False] * len(records), [None] * len(records))


def variant(engine: Engine, constrained: bool) -> Engine:
    """The same loaded model behind an engine with constrained decoding on or off."""
    infer = engine.config.infer.model_copy(update={"constrained": constrained, "grounded": constrained})
    config: TaskConfig = engine.config.model_copy(update={"infer": infer})
    return Engine(engine.model, engine.tokenizer, config)


def quality(engine: Engine, records: list[Record], texts: list[str]) -> dict[str, float]:
    """The task's metrics of answers to records (texts in the same order)."""
    return engine.task.score([engine.task.parse(t, r) for t, r in zip(texts, records)], records)


def row(name: str, engine: Engine, records: list[Record], generation: Generation) -> dict:
    """Speed and quality of one system's answers."""
    metrics = quality(engine, records, generation.texts)
    return {
        "system": name,
        "records_per_s": len(records) / generation.seconds,
        "tokens_per_s": generation.new_tokens / generation.seconds,
        "json_valid": metrics["json_valid"],
        "field_exact": metrics["field_exact"],
        "record_exact": metrics["record_exact"],
        "seconds": generation.seconds,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_dir", type=Path, help="a trained extract run directory (e.g. runs/demo/complaints)")
    parser.add_argument("--records", type=int, default=64, help="held-out records to answer")
    parser.add_argument("--seed-records", type=int, default=16,
                        help="records the slow seed loop answers (the first of them; its rate is per record)")
    parser.add_argument("--json", type=Path, help="also write the rows here")
    args = parser.parse_args()

    engine = Engine.from_run(args.run_dir)  # the adapter attached, as the seed recipe loads it
    records = load_splits(engine.config.data, check=engine.task.check).test[: args.records]
    few = records[: args.seed_records]
    rows = [row(f"(a) seed loop ({len(few)} records)", engine, few, seed_loop(engine, few))]
    engine.merged()  # as `smalltune predict` answers (infer.merge_adapter)
    for name, constrained in (("(b) predict", False), ("(c) predict, constrained", True)):
        fast = variant(engine, constrained)
        generation = fast.generate(records)
        rows.append(row(name, fast, records, generation))
        rows[-1]["field_exact_seed_records"] = quality(fast, few, generation.texts[: len(few)])["field_exact"]
    rows[0]["field_exact_seed_records"] = rows[0]["field_exact"]
    base = rows[0]["records_per_s"]

    table = Table(title=f"batch inference, {len(records)} held-out records, {args.run_dir}")
    columns = ("system", "records/s", "x seed", "tokens/s", "valid JSON", "field exact", "record exact",
               f"field exact, first {len(few)}", "seconds")
    for column in columns:
        table.add_column(column, justify="left" if column == "system" else "right")
    for r in rows:
        table.add_row(r["system"], f"{r['records_per_s']:.2f}", f"{r['records_per_s'] / base:.1f}x", f"{r['tokens_per_s']:.1f}",
                      f"{r['json_valid']:.3f}", f"{r['field_exact']:.3f}", f"{r['record_exact']:.3f}", f"{r['field_exact_seed_records']:.3f}",
                      f"{r['seconds']:.0f}")
    Console(width=160).print(table)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
