"""``ibc-export`` / ``python tools/export.py``: the test-time embedder as TorchScript or ONNX.

    python tools/export.py --cfg RUN/config.yaml (--ckpt CKPT | --init) --format torchscript|onnx --out FILE [--overwrite] [KEY VALUE ...]
"""
from __future__ import annotations

import argparse
from typing import Optional, Sequence

from ibc_geo.cli.common import (add_config_arguments, add_model_arguments, config_from_args,
                                require_model_arguments, run)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tools/export.py",
        description="Export the backbone and its L2 normalisation (what retrieval uses) as TorchScript or ONNX, "
                    "input [B, 3, S, S] preprocessed images, output [B, D] unit embeddings; FILE.json beside it gives "
                    "the input size and the preprocessing. The exported file is checked against the PyTorch "
                    "model (max difference <= 1e-5; ONNX through onnxruntime, pip install -e '.[export]').")
    add_model_arguments(parser)
    parser.add_argument("--format", choices=["torchscript", "onnx"], help="what to write")
    parser.add_argument("--out", metavar="FILE", help="the model file (FILE.json is written beside it)")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace existing FILE and FILE.json (never an input of this command, nor a run's own files)")
    add_config_arguments(parser)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> None:
    parser = build_parser()
    args = parser.parse_intermixed_args(argv)
    if not args.print_config:
        require_model_arguments(parser, args)
        if not args.format:
            parser.error("--format torchscript|onnx is required")
        if not args.out:
            parser.error("--out FILE is required")
    cfg = config_from_args(args)

    from ibc_geo.retrieval.embed import load_model, model_hash
    from ibc_geo.retrieval.export import export_embedder
    from ibc_geo.retrieval.gallery import config_hash

    from ibc_geo.utils.io import check_distinct, check_output

    inputs = [args.cfg, args.ckpt]
    check_distinct([args.out, args.out + ".json"])
    for out in (args.out, args.out + ".json"):  # before any work
        check_output(out, overwrite=args.overwrite, inputs=inputs)
    model, epoch = load_model(cfg, args.ckpt)
    meta = {"checkpoint": args.ckpt or "", "epoch": epoch, "config": args.cfg, "config_hash": config_hash(cfg),
            "model_hash": model_hash(model, cfg)}
    record = export_embedder(model, cfg, args.format, args.out, meta=meta, overwrite=args.overwrite)
    check = record["check"]
    checked = (f"checked with {check['runtime']}: max difference {check['max_abs_diff']:.2g} <= {check['tolerance']:g}"
               if check["checked"] else f"NOT checked ({check['runtime']}; pip install -e '.[export]')")
    print(f"wrote {args.out} and {args.out}.json: {args.format}, input [batch, 3, {cfg.data.image_size}, "
          f"{cfg.data.image_size}] -> [batch, {cfg.model.embedding_dim}], {checked}")


def console() -> int:
    return run(main)
