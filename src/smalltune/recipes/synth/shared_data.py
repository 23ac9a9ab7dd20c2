"""The team's shared data folder (real data sets, each with its SOURCE.md): found, never copied into the project."""

from __future__ import annotations

import os
import random
from pathlib import Path

from smalltune.errors import DataError

DATA_DIR_ENV = "SMALLTUNE_DATA_DIR"


def shared_data_dir(given: Path | None = None) -> Path:
    """The folder holding tnews/, huanhuan/, cluener/ and web-pages/: `given`, else $SMALLTUNE_DATA_DIR, else shared/data beside the repository."""
    if given is not None:
        return Path(given)
    if os.environ.get(DATA_DIR_ENV):
        return Path(os.environ[DATA_DIR_ENV])
    return Path(__file__).resolve().parents[5] / "shared" / "data"  # src/smalltune/recipes/synth/ -> beside the repo


def shared_file(data_dir: Path, relative: str) -> Path:
    path = data_dir / relative
    if not path.is_file():
        raise DataError(f"{path}: not found; pass --data-dir (or set {DATA_DIR_ENV}) to the folder holding {relative}")
    return path


def sample_rows(rows: list, n: int, rng: random.Random) -> list:
    """n rows drawn without replacement, in the order drawn (all of them, shuffled, when n exceeds them)."""
    return rng.sample(rows, min(n, len(rows)))
