"""Train every point x seed of an ablation grid, then tabulate the runs.

    python tools/ablate.py --cfg configs/demo.yaml --grid configs/ablations/demo_topology.yaml \
        [--seeds 0 1 2] [--dry-run] [--print-config] [KEY VALUE ...]

Runs go to <output_dir>/<point>/seed=<seed>; the table to <output_dir>/results.{csv,md}, TensorBoard
hparams to <output_dir>/hparams. Re-running the command skips finished runs and resumes the others.
The grid file format is documented in ibc_geo/ablation/grid.py and configs/ablations/.
"""
import argparse
import sys

from ibc_geo.ablation import AblationError, format_plan, run_ablation
from ibc_geo.config import add_config_arguments, config_from_args
from ibc_geo.utils.cli import run_tool


def split_seeds(words):
    """``--seeds 0 1 graph.k 5`` -> ([0, 1], ["graph.k", "5"]): seeds end at the first non-integer."""
    for i, word in enumerate(words):
        if not word.lstrip("-").isdigit():
            return [int(w) for w in words[:i]], list(words[i:])
    return [int(w) for w in words], []


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--grid", required=True, metavar="FILE", help="grid YAML: grid / tie / seeds")
    parser.add_argument("--seeds", nargs="+", metavar="SEED",
                        help="seeds to run (default: the grid's 'seeds:', else the config's seed)")
    parser.add_argument("--dry-run", action="store_true", help="list the runs and their state; train nothing")
    add_config_arguments(parser, cfg_required=True)  # --cfg, --print-config (the base config), KEY VALUE ...
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
    try:
        result = run_ablation(args.cfg, args.grid, seeds=seeds, overrides=overrides, dry_run=args.dry_run)
    except AblationError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(AblationError.exit_code)
    if args.dry_run:
        print(format_plan(result.plan), end="")
        return
    with open(result.files["md"], encoding="utf-8") as f:
        print(f.read(), end="")
    print(f"\nwrote {result.files['csv']} and {result.files['md']}; "
          f"compare the runs with: tensorboard --logdir {result.plan.output_dir}")


if __name__ == "__main__":
    run_tool(main)
