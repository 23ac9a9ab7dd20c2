"""smalltune: a small, private, fast language model for one narrow task, from one YAML file.

The Python API the CLI is a shell over (each imported when first used, so `import smalltune` stays light):

    from smalltune import load_config, train, evaluate_run, load_engine, predict_file

The package is laid out as the pipeline: config → data → tasks → formatting/models → training, inference
→ evaluation, serving, labelling → recipes → cli (docs/architecture.md).
"""

from __future__ import annotations

import importlib
from typing import Any

from smalltune.config import TaskConfig, load_config
from smalltune.errors import SmalltuneError

__version__ = "0.1.0"

_LAZY = {
    "train": "smalltune.training.run",
    "evaluate_run": "smalltune.evaluation.evaluate",
    "load_engine": "smalltune.inference.engine",
    "predict_file": "smalltune.inference.predict",
    "RunDir": "smalltune.runs",
}
__all__ = ["SmalltuneError", "TaskConfig", "load_config", *_LAZY]


def __getattr__(name: str) -> Any:
    """The entry points that need torch, imported on first use."""
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'smalltune' has no attribute {name!r}")
