"""The config system: one schema in code (``schema.py``), YAML on top, ``KEY VALUE`` overrides."""
from ibc_geo.config.cli import add_config_arguments, config_from_args, run_config_cli
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
    "add_config_arguments",
    "check_config",
    "config_from_args",
    "config_differences",
    "config_from_dict",
    "config_to_dict",
    "default_config",
    "flatten_config",
    "load_config",
    "parse_overrides",
    "run_config_cli",
    "save_config",
    "to_yaml",
]
