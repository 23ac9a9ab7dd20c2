"""smalltune: a small, private, fast language model for one narrow task, from one YAML file."""

from smalltune.config import TaskConfig, load_config
from smalltune.errors import SmalltuneError

__all__ = ["TaskConfig", "SmalltuneError", "load_config"]
__version__ = "0.1.0"
