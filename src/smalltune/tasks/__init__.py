"""Task kinds: what a record's prompt, answer, grammar, score, teacher question and served route are, per kind."""

from __future__ import annotations

from smalltune.config import TaskConfig
from smalltune.registry import KINDS
from smalltune.tasks.base import Parsed, TaskKind

__all__ = ["Parsed", "TaskKind", "build_task"]


def build_task(config: TaskConfig) -> TaskKind:
    """The TaskKind object for the config's kind."""
    return KINDS.get(config.kind)(config)
