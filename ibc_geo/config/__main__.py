from ibc_geo.config.cli import run_config_cli

run_config_cli()
