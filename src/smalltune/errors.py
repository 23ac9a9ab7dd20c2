"""Errors a user can cause: the CLI prints them without a traceback and exits non-zero."""


class SmalltuneError(Exception):
    """Base class: the message says what is wrong, where, and how to fix it."""


class ConfigError(SmalltuneError):
    """The task file is missing, malformed or inconsistent."""


class DataError(SmalltuneError):
    """Input records are unreadable or invalid; the message lists each as file:line."""


class ModelError(SmalltuneError):
    """A model reference cannot be resolved or loaded."""
