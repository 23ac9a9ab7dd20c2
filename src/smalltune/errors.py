"""Errors a user can cause: the CLI prints them without a traceback and exits non-zero."""


class SmalltuneError(Exception):
    """Base class: the message says what is wrong, where, and how to fix it."""


class ConfigError(SmalltuneError):
    """The task file is missing, malformed or inconsistent."""


class DataError(SmalltuneError):
    """Input records are unreadable or invalid; the message lists each as file:line."""


class OutputError(SmalltuneError):
    """An output path that would overwrite an input, or that holds a file smalltune did not write there."""


class ModelError(SmalltuneError):
    """A model reference cannot be resolved or loaded."""


class RunError(SmalltuneError):
    """A run directory is missing, or lacks what the command needs (its task file, its trained adapter)."""


def validation_problems(errors: list[dict], prefix: str = "") -> list[str]:
    """One 'key.path: message' line per pydantic validation error (`prefix` before each key, e.g. 'teacher.')."""
    return [f"{prefix}{'.'.join(str(part) for part in error['loc']) or '(top level)'}: {error['msg']}" for error in errors]


class InputError(SmalltuneError):
    """One input cannot be answered as given (too long to show or to ground); the message says how to fix it."""
