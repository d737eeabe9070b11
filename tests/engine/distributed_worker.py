"""Run under ``torchrun --nproc_per_node 2`` or alone: one training step, then a sharded evaluation.

    python distributed_worker.py OUT.pt [sync_bn|eval_bn|pml]

Rank 0 (or the single process) saves the parameters after one RAdam step and the evaluation's
metrics, with those of the test-time MPN refinement (``refined``), to OUT.pt. float64 throughout, dropout on, the same seed everywhere. ``pml``: as ``sync_bn``
with Proxy Anchor on the gathered embeddings as the backbone loss, its proxies in their own
parameter group (saved as ``loss.*``), the trainer's builders and gradient sharing.
"""
import os
import sys

import torch

from ibc_geo.config import load_config
from ibc_geo.data import build_dataset, build_transforms
from ibc_geo.engine.evaluator import run_evaluation
from ibc_geo.engine.optim import build_optimizer, share_gradients
from ibc_geo.modeling import IntraBatchLoss, IntraBatchModel
from ibc_geo.utils.distributed import init_from_env, synchronize_batchnorm
from ibc_geo.utils.runtime import distributed_rank

TINY = ["data.name", "digits", "data.image_size", "32", "data.resize_size", "32", "data.workers", "0",
        "data.val_classes", "2", "sampler.classes_per_batch", "3", "sampler.samples_per_class", "4",
        "model.backbone", "resnet18", "model.pretrained", "none", "model.embedding_dim", "32",
        "mpn.num_heads", "2", "eval.kmeans_iters", "5", "eval.batch_size", "64", "device", "cpu",
        "eval.refine", "mpn", "eval.refine_k", "4"]


def main(out: str, mode: str) -> None:
    torch.set_default_dtype(torch.float64)
    torch.set_num_threads(1)
    distributed = init_from_env(torch.device("cpu"))
    rank, world = distributed_rank()
    pml = ["loss.backbone", "pml/ProxyAnchorLoss", "train.lr", "1e-2", "train.weight_decay", "1e-4"]
    cfg = load_config(None, TINY + (pml if mode == "pml" else []))
    torch.manual_seed(0)
    model = IntraBatchModel.from_config(cfg, num_classes=5)
    images = torch.randn(12, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    labels = torch.arange(3).repeat_interleave(4)
    if mode == "eval_bn":
        model.train()
        model.backbone.eval()  # BatchNorm on its running statistics: no per-slice statistics
    else:
        model.train()
    if distributed and mode in ("sync_bn", "pml"):
        synchronize_batchnorm(model.backbone, torch.device("cpu"))
    loss = IntraBatchLoss.from_config(cfg, num_classes=5)  # Proxy Anchor draws its proxies here (pml)
    if mode == "pml":
        optimizer = build_optimizer(cfg, model, loss)
    else:
        optimizer = torch.optim.RAdam(model.parameters(), lr=1e-2, weight_decay=1e-4, decoupled_weight_decay=True)
    step_model = model
    if distributed:
        step_model = torch.nn.parallel.DistributedDataParallel(model)
    b = 12 // world
    mine = slice(rank * b, (rank + 1) * b)
    torch.manual_seed(7)  # the MPN's dropout draws: the same on every rank
    out_ = step_model(images[mine], labels[mine], distributed=distributed)
    extra = {"embeddings": out_.embeddings} if loss.reads_embeddings else {}
    terms = loss(out_.labels, out_.backbone_logits, out_.mpn_logits, **extra)
    optimizer.zero_grad()
    terms["total"].backward()
    share_gradients(loss.parameters())
    optimizer.step()
    torch.set_default_dtype(torch.float32)
    # the evaluation and the test-time MPN (its groups sharded over the ranks) of a fresh model
    evaluated = run_evaluation(cfg, IntraBatchModel.from_config(cfg, num_classes=5),
                               build_dataset(cfg, "test", build_transforms(cfg, train=False)), torch.device("cpu"),
                               refine=True)
    evaluation = dict(evaluated.metrics, refined=evaluated.refined["metrics"])
    if rank == 0:
        params = {**model.state_dict(), **{f"loss.{k}": v for k, v in loss.state_dict().items()}}
        torch.save({"params": {k: v.detach().clone() for k, v in params.items()},
                    "loss": float(terms["total"]), "metrics": evaluation, "world": world}, out)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2] if len(sys.argv) > 2 else "sync_bn")
    if torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()
    os._exit(0)
