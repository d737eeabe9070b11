"""``ibc-ablate`` / ``python tools/ablate.py``: train every point x seed of an ablation grid, then tabulate.

    python tools/ablate.py --cfg configs/demo.yaml --grid configs/ablations/demo_topology.yaml \\
        [--seeds 0 1 2] [--dry-run] [--print-config] [KEY VALUE ...]

Runs go to <output_dir>/<point>/seed=<seed>; the table to <output_dir>/results.{csv,md}, TensorBoard
hparams to <output_dir>/hparams. Re-running the command skips finished runs and resumes the others.
The grid file format is documented in ibc_geo/ablation/grid.py and configs/ablations/.
"""
from __future__ import annotations

import argparse
from typing import Optional, Sequence

from ibc_geo.cli.common import add_config_arguments, config_from_args, run


def split_seeds(words):
    """``--seeds 0 1 graph.k 5`` -> ([0, 1], ["graph.k", "5"]): seeds end at the first non-integer."""
    for i, word in enumerate(words):
        if not word.lstrip("-").isdigit():
            return [int(w) for w in words[:i]], list(words[i:])
    return [int(w) for w in words], []


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tools/ablate.py", formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Train every point x seed of an ablation grid, then tabulate them:\n\n"
                    "  tools/ablate.py --cfg configs/demo.yaml --grid configs/ablations/demo_topology.yaml \\\n"
                    "      [--seeds 0 1 2] [--dry-run] [--print-config] [KEY VALUE ...]\n\n"
                    "Runs go to <root>/<point>/seed=<seed>, root = output_dir when given as KEY VALUE, else\n"
                    "<parent of the base output_dir>/ablations/<grid name>; the table to <root>/results.{csv,md}.\n"
                    "Re-running the command skips finished runs and resumes the others. The grid file\n"
                    "format: ibc_geo/ablation/grid.py and configs/ablations/.")
    parser.add_argument("--grid", required=True, metavar="FILE", help="grid YAML: grid / tie / seeds")
    parser.add_argument("--seeds", nargs="+", metavar="SEED",
                        help="seeds to run (default: the grid's 'seeds:', else the config's seed)")
    parser.add_argument("--dry-run", action="store_true", help="list the runs and their state; train nothing")
    add_config_arguments(parser, cfg_required=True)  # --cfg, --print-config (the base config), KEY VALUE ...
    return parser


def main(argv: Optional[Sequence[str]] = None) -> None:
    parser = build_parser()
    args = parser.parse_intermixed_args(argv)
    seeds, overrides = None, list(args.overrides)
    if args.seeds is not None:
        seeds, extra = split_seeds(args.seeds)
        if not seeds:
            parser.error(f"--seeds needs at least one integer, got {' '.join(args.seeds)}")
        overrides = extra + overrides
    if args.print_config:
        args.overrides = overrides
        config_from_args(args)  # prints the base config every run starts from, and exits
    from ibc_geo.ablation import format_plan, run_ablation

    result = run_ablation(args.cfg, args.grid, seeds=seeds, overrides=overrides, dry_run=args.dry_run)
    if args.dry_run:
        print(format_plan(result.plan), end="")
        return
    if not result.files:  # a rank other than 0 under torchrun
        return
    with open(result.files["md"], encoding="utf-8") as f:
        print(f.read(), end="")
    print(f"\nwrote {result.files['csv']} and {result.files['md']}; "
          f"compare the runs with: tensorboard --logdir {result.plan.output_dir}")


def console() -> int:
    return run(main)
