"""Classification benchmark: scoring each candidate label after one pass over the prompt (infer.classify: score)
against generating the label token by token under the candidates' grammar (infer.classify: generate).

Same fine-tuned model (adapter merged), same held-out records, same prompts, one process; each mode first answers
two records untimed (grammar compilation, allocator warm-up), then the timed records.

    python benchmarks/classify_speed.py runs/demo-news-classify/news-classify --records 32
"""

from __future__ import annotations

import argparse
from pathlib import Path

from rich.console import Console
from rich.table import Table

from smalltune.data.records import load_splits
from smalltune.inference.engine import load_engine
from smalltune.inference.transformers_engine import TransformersEngine


def in_mode(engine: TransformersEngine, mode: str) -> TransformersEngine:
    """The same loaded model behind an engine that classifies by `mode` (score or generate)."""
    config = engine.config.model_copy(update={"infer": engine.config.infer.model_copy(update={"classify": mode})})
    return TransformersEngine(engine.model, engine.tokenizer, config)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path, help="a classify run directory (runs/<name>)")
    parser.add_argument("--records", type=int, default=32, help="held-out records to answer")
    args = parser.parse_args()

    loaded = load_engine(args.run_dir)
    records = load_splits(loaded.config.data, check=loaded.task.check).test[: args.records]
    rows, answers = [], {}
    for mode in ("generate", "score"):
        engine = in_mode(loaded, mode)
        engine.generate(records[:2])
        generation = engine.generate(records)
        parsed = engine.task.parse_all(generation.texts, records, generation.probabilities)
        metrics = engine.task.score(parsed, records)
        answers[mode] = generation.texts
        rows.append([mode, f"{len(records) / generation.seconds:.2f}", f"{generation.seconds:.1f}",
                     f"{metrics['accuracy']:.3f}", f"{metrics.get('ece', float('nan')):.3f}"])
    same = sum(a == b for a, b in zip(answers["generate"], answers["score"]))
    table = Table(title=f"{args.run_dir}: {len(records)} held-out records, batch size {loaded.config.infer.batch_size}")
    for column in ("infer.classify", "records/s", "seconds", "accuracy", "ece"):
        table.add_column(column, justify="left" if column == "infer.classify" else "right")
    for row in rows:
        table.add_row(*row)
    console = Console()
    console.print(table)
    console.print(f"score / generate: {float(rows[1][1]) / float(rows[0][1]):.1f}x the records/s; "
                  f"the same label for {same} of {len(records)} records")


if __name__ == "__main__":
    main()
