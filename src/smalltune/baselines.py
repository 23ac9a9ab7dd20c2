"""Non-LLM baselines a fine-tune is compared against, behind one small interface.

A baseline learns from the training records (or ignores them) and answers test records with text in
the task's canonical answer form, so the task's own `parse` and `score` judge it like any model.
Task files name baselines under `eval.baselines`; each name maps to a factory in `BASELINES`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from smalltune.config import TaskConfig
from smalltune.data import Record
from smalltune.errors import ConfigError


class Baseline(Protocol):
    """A system without a language model: fit on training records, then answer."""

    name: str

    def fit(self, train: list[Record]) -> None: ...
    def answer(self, records: list[Record]) -> list[str]: ...


BASELINES: dict[str, Callable[[TaskConfig], Baseline]] = {}


def build_baseline(name: str, config: TaskConfig) -> Baseline:
    """The registered baseline `name` for this task; ConfigError names the choices when unknown."""
    if name not in BASELINES:
        raise ConfigError(f"eval.baselines: unknown baseline {name!r}; known: {', '.join(sorted(BASELINES)) or 'none'}")
    return BASELINES[name](config)
