"""Every pluggable part by name: task kinds, data formats, inference engines and baselines.

Each entry maps a name (the value a task file or a CLI option gives) to "module:attribute", imported
only when the part is first used. So the config can check names without importing the parts (no
cycle), an optional dependency (vLLM) costs nothing until asked for, and adding a part is one new
module plus one line here.
"""

from __future__ import annotations

import importlib
from typing import Any

from smalltune.errors import ConfigError


class Registry:
    """Names of one kind of part, each resolved to its implementation on first use."""

    def __init__(self, what: str, key: str, entries: dict[str, str]):
        self.what = what  # e.g. "task kind"
        self.key = key  # where a user names one, e.g. "kind" or "--engine"
        self._entries = entries

    def names(self) -> list[str]:
        """The registered names, in registration order."""
        return list(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def check(self, name: str) -> str:
        """`name` when registered; ValueError naming the choices otherwise (for pydantic validators)."""
        if name not in self._entries:
            raise ValueError(f"unknown {self.what} {name!r}; use one of {', '.join(self._entries)}")
        return name

    def unknown(self, name: str) -> str:
        """The message for a name that is not registered: what was given, and the choices."""
        return f"{self.key}: unknown {self.what} {name!r}; use one of {', '.join(self._entries)}"

    def get(self, name: str) -> Any:
        """The implementation registered as `name`; ConfigError naming the choices otherwise."""
        if name not in self._entries:
            raise ConfigError(self.unknown(name))
        module, _, attribute = self._entries[name].partition(":")
        return getattr(importlib.import_module(module), attribute)


KINDS = Registry("task kind", "kind", {
    "extract": "smalltune.tasks.extract:ExtractTask",
    "classify": "smalltune.tasks.classify:ClassifyTask",
    "chat": "smalltune.tasks.chat:ChatTask",
})

FORMATS = Registry("data format", "data.format", {
    "alpaca": "smalltune.data.formats:Alpaca",
    "messages": "smalltune.data.formats:Messages",
    "columns": "smalltune.data.formats:Columns",
})

AUTO_ENGINE = "auto"  # infer.engine's default: the engine `inference.engine.choose_engine` picks for the task and machine
ENGINES = Registry("inference engine", "--engine", {
    "transformers": "smalltune.inference.transformers_engine:TransformersEngine",
    "vllm": "smalltune.inference.vllm_engine:VllmEngine",
    "openvino": "smalltune.inference.openvino_engine:OpenVinoEngine",
})

BASELINES = Registry("baseline", "eval.baselines", {
    "tfidf-logreg": "smalltune.evaluation.baselines:TfidfLogReg",
    "trafilatura": "smalltune.evaluation.baselines:Trafilatura",
    "gne": "smalltune.evaluation.baselines:Gne",
    "complaint-rules": "smalltune.evaluation.baselines:ComplaintRules",
    "crf-tagger": "smalltune.evaluation.crf_tagger:CrfTagger",
})
