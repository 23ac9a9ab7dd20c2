"""What training reports while it runs.

Two things: the experiment tracker chosen by `train.report_to` (SwanLab offline by default, SwanLab cloud,
TensorBoard, or nothing), and the task's own metrics on the validation split at every evaluation, so a
checkpoint is judged by its answers and not only by its loss.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

from transformers import TrainerCallback

from smalltune.config import TaskConfig
from smalltune.data.records import Record
from smalltune.errors import ConfigError
from smalltune.inference.transformers_engine import TransformersEngine
from smalltune.io import atomic_write_jsonl, json_line, read_appended
from smalltune.runs import RunDir


def tracker_callbacks(config: TaskConfig, run: RunDir) -> list[TrainerCallback]:
    """The Trainer callbacks for `train.report_to`; logs kept on disk go inside the run directory."""
    choice = config.train.report_to
    if choice == "none":
        return []
    if choice == "tensorboard":
        return [_tensorboard(run.tensorboard)]
    return _swanlab(config, run.swanlab, cloud=choice == "swanlab-cloud")


LOG_KEYS = ("step", "time")  # every line of train_log.jsonl starts with these


class JsonLog(TrainerCallback):
    """Appends every trainer log line (loss, lr, grad norm, eval) to run_dir/train_log.jsonl as it happens.

    A run resumed from a checkpoint first drops the lines a killed run logged after that checkpoint: it logs
    those steps again.
    """

    def __init__(self, path: Path):
        self.path = path

    def on_train_begin(self, args, state, control, **kwargs):
        if not state.is_world_process_zero:
            return
        rows = read_appended(self.path, LOG_KEYS)
        kept = [row for row in rows if row["step"] <= state.global_step]
        if len(kept) < len(rows):
            atomic_write_jsonl(self.path, kept)

    def on_log(self, args, state, control, logs=None, **kwargs):
        if state.is_world_process_zero and logs:
            with self.path.open("a", encoding="utf-8") as handle:
                handle.write(json_line({"step": state.global_step, "time": time.time(), **logs}))


def _tensorboard(log_dir: Path) -> TrainerCallback:
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError as exc:
        raise ConfigError(
            "train.report_to: tensorboard needs the tensorboard package: pip install tensorboard "
            "(or choose swanlab or none)"
        ) from exc
    from transformers.integrations import TensorBoardCallback

    return TensorBoardCallback(SummaryWriter(log_dir=str(log_dir)))


def _swanlab(config: TaskConfig, log_dir: Path, cloud: bool) -> list[TrainerCallback]:
    """SwanLab's own Trainer callback (it starts the run itself, which `report_to=["swanlab"]` does not)."""
    import swanlab
    from swanlab.integration.transformers import SwanLabCallback

    if cloud and not swanlab.Settings().api_key:
        raise ConfigError(
            "train.report_to: swanlab-cloud needs a SwanLab account on this machine: run `swanlab login` "
            "(or set SWANLAB_API_KEY), or choose swanlab to keep the logs offline in the run directory"
        )
    tracker = SwanLabCallback(
        project="smalltune", experiment_name=config.name, mode="online" if cloud else "offline", log_dir=str(log_dir)
    )
    return [_FinishSwanLabRun(), tracker]


class _FinishSwanLabRun(TrainerCallback):
    """Closes the SwanLab run when training ends, unless the run was open before training started."""

    def __init__(self) -> None:
        self.opened_here = False

    def on_train_begin(self, args, state, control, **kwargs):
        import swanlab

        self.opened_here = not swanlab.has_run()

    def on_train_end(self, args, state, control, **kwargs):
        import swanlab

        if self.opened_here and swanlab.has_run():
            swanlab.finish()


CHECKPOINT_SCORE = "eval_checkpoint_score"


def checkpoint_score(headline: float, step: int) -> float:
    """What picks the checkpoint to keep: the headline metric, ties going to the later checkpoint.

    A validation set the model soon answers perfectly ties every checkpoint from then on; the later one has seen
    more of the data. (The validation loss, the tie-break before, differs there by noise: 0.0007 against 0.0008
    kept the first of the complaints recipe's two epochs and cost 6 points of held-out questions.) The step
    term stays far below the smallest headline difference.
    """
    return headline + 1e-12 * step


class ValidationMetrics(TrainerCallback):
    """At each evaluation, answers the validation records with the model in training and scores them.

    Answers come from the inference engine (greedy or, for classify, by scoring; batched; the same prompts as
    `smalltune eval`).
    The task's metrics join the evaluation metrics as `eval_<metric>` (so `metric_for_best_model` can pick
    the best checkpoint by them) and are logged through `log` (the trainer's, so every tracker sees them).
    """

    def __init__(self, config: TaskConfig, records: list[Record], log: Callable[[dict[str, float]], None]):
        self.config = config
        self.records = records
        self.log = log
        self.engine = None  # built at the first evaluation, around the trainer's model

    def on_evaluate(self, args, state, control, metrics=None, model=None, processing_class=None, **kwargs):
        if self.engine is None:
            self.engine = TransformersEngine(model, processing_class, self.config)
        generation = self.engine.generate(self.records)
        task = self.engine.task
        parsed = task.parse_all(generation.texts, self.records, generation.probabilities)
        scores = {f"eval_{name}": value for name, value in task.score(parsed, self.records).items()}
        metrics.update(scores)
        metrics[CHECKPOINT_SCORE] = checkpoint_score(scores[f"eval_{task.headline}"], state.global_step)
        self.log(scores)
