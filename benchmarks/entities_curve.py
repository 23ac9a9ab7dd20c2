"""The entities recipe's learning curve: held-out micro-F1 of every system as the training set grows.

For each N it runs `smalltune demo entities --train-records N --work-dir runs/entities-curve/N`, each in a process
of its own, one at a time. The training sets nest (each run's sentences hold every smaller run's) and every run
is measured on the same held-out sentences. Then it reads each run's results (and the training time from
train_summary.json) and prints one table: N, training minutes, the held-out micro-F1 of the fine-tuned model and
the CRF baseline on all held-out sentences, and of the fine-tuned and the untuned model (zero-shot and few-shot)
on the first 100, where the demo measures the untuned model.

    python benchmarks/entities_curve.py                          # N = 250, 500, 1000, 2000: about 3 h (2-core CPU)
    python benchmarks/entities_curve.py --sizes 250 500 1000 2000 4000
    python benchmarks/entities_curve.py --table-only             # print the table of the runs already there
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

from rich.console import Console
from rich.table import Table

from smalltune.evaluation.crf_tagger import CrfTagger
from smalltune.evaluation.evaluate import few_shot_name
from smalltune.evaluation.report import TUNED, UNTUNED
from smalltune.recipes.demo import UNTUNED_SAMPLE_FILE, UNTUNED_SAMPLE_RECORDS, get_recipe
from smalltune.runs import RunDir

RECIPE = "entities"
SIZES = (250, 500, 1000, 2000)


def run_demo(n: int, work_dir: Path) -> None:
    """`smalltune demo entities --train-records n` in a process of its own; stops the curve if it fails."""
    command = [sys.executable, "-m", "smalltune.cli", "demo", RECIPE, "--train-records", str(n), "--work-dir", str(work_dir)]
    print("$", " ".join(command), flush=True)
    subprocess.run(command, check=True)


def curve_row(n: int, run: RunDir, metric: str, untuned: list[str]) -> list[str]:
    """N, training minutes, the fine-tuned model's and the CRF's held-out `metric`, then the fine-tuned and the
    `untuned` systems' on the untuned sample."""
    held_out = json.loads(run.metrics.read_text(encoding="utf-8"))["systems"]
    sample = json.loads(run.evaluation(Path(UNTUNED_SAMPLE_FILE)).metrics.read_text(encoding="utf-8"))["systems"]
    seconds = json.loads(run.train_summary.read_text(encoding="utf-8"))["seconds"]
    cells = [held_out[TUNED], held_out[CrfTagger.name], sample[TUNED], *(sample[name] for name in untuned)]
    return [str(n), f"{seconds / 60:.1f}", *(f"{system['metrics'][metric]:.3f}" for system in cells)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=list(SIZES), help="training set sizes N")
    parser.add_argument("--root", type=Path, default=Path("runs/entities-curve"), help="work dirs: ROOT/N")
    parser.add_argument("--table-only", action="store_true", help="do not train: tabulate the runs under ROOT")
    args = parser.parse_args()

    recipe = get_recipe(RECIPE)
    config = recipe.config()
    untuned = [UNTUNED, few_shot_name(config.eval.few_shot)]
    if not args.table_only:
        for n in args.sizes:
            run_demo(n, args.root / str(n))
    table = Table(title=f"{RECIPE}: held-out {recipe.published.metric} by training set size")
    first = f"first {UNTUNED_SAMPLE_RECORDS}"
    for column in ("N", "training min", f"{TUNED}, all {recipe.n_test}", f"{CrfTagger.name}, all {recipe.n_test}",
                   f"{TUNED}, {first}", *(f"{name}, {first}" for name in untuned)):
        table.add_column(column, justify="right")
    for n in args.sizes:
        table.add_row(*curve_row(n, RunDir(args.root / str(n) / config.name), recipe.published.metric, untuned))
    Console().print(table)


if __name__ == "__main__":
    main()
