"""The config system: one schema in code (``schema.py``), YAML on top, ``KEY VALUE`` overrides."""
from ibc_geo.config.loader import (
    ConfigError,
    check_config,
    config_differences,
    config_from_dict,
    config_to_dict,
    default_config,
    flatten_config,
    load_config,
    parse_overrides,
    save_config,
    to_yaml,
)
from ibc_geo.config.schema import CHOICES, Config

__all__ = [
    "CHOICES",
    "Config",
    "ConfigError",
    "check_config",
    "config_differences",
    "config_from_dict",
    "config_to_dict",
    "default_config",
    "flatten_config",
    "load_config",
    "parse_overrides",
    "save_config",
    "to_yaml",
]
