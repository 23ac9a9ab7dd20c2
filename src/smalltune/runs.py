"""The run directory: every file a run writes, named here once.

`train` fills it (task.yaml, adapter/, checkpoints/, logs), `eval` adds the results and the report,
and `predict`, `serve` and `export` read it. `RunDir.load` checks that a run is there to be used.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from smalltune.config import TaskConfig, load_config
from smalltune.errors import RunError


@dataclass(frozen=True)
class RunDir:
    """One run directory (`<output_dir>/<name>`) and the paths of what it holds."""

    path: Path

    @classmethod
    def of(cls, config: TaskConfig) -> RunDir:
        """The run directory a task file's runs go to."""
        return cls(Path(config.run_dir))

    @classmethod
    def at(cls, path: Path | str | RunDir) -> RunDir:
        """The run directory at `path` (a RunDir is taken as it is), not checked."""
        return path if isinstance(path, RunDir) else cls(Path(path))

    @classmethod
    def load(cls, path: Path | str | RunDir) -> RunDir:
        """An existing, trained run; RunError says what is missing and how to get it."""
        run = cls.at(path)
        if not run.task_file.is_file():
            raise RunError(f"{run.path}: not a run directory (no {run.task_file.name}); "
                           "give the folder `smalltune train` printed (runs/<name>)")
        if not (run.adapter / "adapter_config.json").is_file():
            raise RunError(f"{run.adapter}: no trained adapter here; run `smalltune train {run.task_file}` first "
                           "(or `train --resume` to finish an interrupted run)")
        return run

    def config(self) -> TaskConfig:
        """The task file the run was trained with (its paths already resolved)."""
        if not self.task_file.is_file():
            raise RunError(f"{self.path}: not a run directory (no {self.task_file.name})")
        return load_config(self.task_file)

    @property
    def task_file(self) -> Path:
        return self.path / "task.yaml"

    @property
    def adapter(self) -> Path:
        """The trained LoRA adapter and the tokenizer it was trained with."""
        return self.path / "adapter"

    @property
    def checkpoints(self) -> Path:
        return self.path / "checkpoints"

    @property
    def train_log(self) -> Path:
        """One JSON line per trainer log (loss, learning rate, validation metrics), appended as training runs."""
        return self.path / "train_log.jsonl"

    @property
    def train_summary(self) -> Path:
        return self.path / "train_summary.json"

    @property
    def invalid_records(self) -> Path:
        return self.path / "invalid_records.txt"

    @property
    def swanlab(self) -> Path:
        return self.path / "swanlog"

    @property
    def tensorboard(self) -> Path:
        return self.path / "tensorboard"

    @property
    def metrics(self) -> Path:
        return self.path / "metrics.json"

    @property
    def predictions(self) -> Path:
        return self.path / "predictions.jsonl"

    @property
    def report_md(self) -> Path:
        return self.path / "report.md"

    @property
    def report_html(self) -> Path:
        return self.path / "report.html"

    def model_files(self) -> dict[str, bytes]:
        """What loading the run's model needs of it (the task file and the adapter with its tokenizer), by path
        relative to the run directory: written into an empty folder, they make a run `load` accepts."""
        paths = [self.task_file, *sorted(p for p in self.adapter.rglob("*") if p.is_file())]
        return {str(p.relative_to(self.path)): p.read_bytes() for p in paths}

    def evaluation(self, test_file: Path) -> RunDir:
        """Where `eval --test FILE` puts the results on another test file: the folder eval-<file stem>, holding
        the same result files (metrics.json, predictions.jsonl, report.md, report.html) as the run directory."""
        return RunDir(self.path / f"eval-{Path(test_file).stem}")
