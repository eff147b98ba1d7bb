"""One TOML file per deployment -> validated settings. See schema for the keys."""

from keepers.config.loader import ConfigError, load_config
from keepers.config.schema import Settings

__all__ = ["ConfigError", "Settings", "load_config"]
