r"""The backbone's loss, by name (``loss.backbone``): the paper's cross-entropy or a loss of
pytorch-metric-learning on the backbone embeddings.

The objective (:class:`ibc_geo.modeling.loss.IntraBatchLoss`) is

.. math::
    \mathcal{L} = w_b \, \mathcal{L}_b + w_m \, \mathrm{CE}_\epsilon\!\left(\frac{z^{m}}{T}, y\right)

and this module provides :math:`\mathcal{L}_b`:

``ce`` (the paper, METHOD.md §1.4)
    :math:`\mathcal{L}_b = \mathrm{CE}_\epsilon(z^b / T, y)`, the label-smoothed cross-entropy on the
    backbone classifier's logits :math:`z^b` divided by the temperature :math:`T`.

``pml/<LossName>`` (``loss.backbone_kwargs``, optional ``loss.miner pml/<MinerName>``)
    :math:`\mathcal{L}_b = \ell(f, y; M(f, y))`: the loss ``pytorch_metric_learning.losses.<LossName>``
    on the backbone embeddings :math:`f` (under ``torchrun`` the global batch, all-gathered with
    autograd by the model) and their labels, on the pairs or triplets the miner :math:`M` picks
    (all of them without a miner). E.g. Proxy Anchor (Kim et al., CVPR 2020), with :math:`P` the
    proxies, :math:`P^+` those of the batch's classes, :math:`s` the cosine similarity:

    .. math::
        \ell = \frac{1}{|P^+|} \sum_{p \in P^+} \log\Big(1 + \sum_{x \in X_p^+} e^{-\alpha (s(x, p) - \delta)}\Big)
             + \frac{1}{|P|} \sum_{p \in P} \log\Big(1 + \sum_{x \in X_p^-} e^{\alpha (s(x, p) + \delta)}\Big)

    or Multi-Similarity (Wang et al., CVPR 2019) on the pairs of its miner,
    :math:`\frac{1}{B}\sum_i \big[\frac{1}{\alpha} \log(1 + \sum_{k \in P_i} e^{-\alpha (S_{ik} - \lambda)})
    + \frac{1}{\beta} \log(1 + \sum_{k \in N_i} e^{\beta (S_{ik} - \lambda)})\big]`.
    The backbone classifier is then not part of the objective; its logits enter the total with
    weight 0 (:attr:`BackboneLoss.reads_logits`), so that DistributedDataParallel sees every
    parameter used.

``num_classes`` and ``embedding_size``, which proxy and classifier losses need, are filled in from
the training classes and ``model.embedding_dim`` unless ``loss.backbone_kwargs`` gives them. A
loss with parameters (proxies, class weights) gets its own optimizer parameter group
(:mod:`ibc_geo.engine.optim`, ``loss.lr_mult``) and its state is kept in the checkpoints.

This module lives in the ``nn`` layer so that the config checks (:func:`check_loss_config`, which
name the closest loss and miner names and the keyword arguments a loss does not take) can use it.
"""
from __future__ import annotations

import importlib
import inspect
from typing import Any, Iterator, Mapping, Optional, Tuple

import torch
from torch import nn

from ibc_geo.utils.registry import Registry, closest

PML_PREFIX = "pml/"
#: What installs pytorch-metric-learning (setup.py's ``pml`` extra).
PML_INSTALL = 'pip install -e ".[pml]" (or pip install pytorch-metric-learning)'
#: Keyword arguments filled in from the model unless given: name -> what fills it.
FILLED_IN = {"num_classes": "the training classes", "embedding_size": "model.embedding_dim"}
#: Keyword arguments of pml losses and miners that take a pml object, given by class name in a
#: config (e.g. ``distance: CosineSimilarity``): name -> the pml module holding the classes.
OBJECT_KWARGS = {"distance": "distances", "reducer": "reducers", "embedding_regularizer": "regularizers",
                 "weight_regularizer": "regularizers"}

#: The backbone losses by name; ``pml/<LossName>`` resolves to :class:`MetricLearningLoss`.
BACKBONE_LOSSES = Registry("backbone loss")


class BackboneLoss(nn.Module):
    """A backbone loss: ``forward(labels, embeddings, logits) -> scalar``; says what it reads."""

    reads_embeddings = False  # needs the backbone embeddings f
    reads_logits = True  # needs the backbone classifier's logits z^b

    @classmethod
    def check_config(cls, cfg) -> Iterator[Tuple[str, Any, str]]:
        """``(key, value, allowed)`` for each bad value of the config (none by default)."""
        return iter(())


@BACKBONE_LOSSES.register("ce")
class BackboneCrossEntropy(BackboneLoss):
    r""":math:`\mathrm{CE}_\epsilon(z^b / T, y)`: the paper's backbone loss (``torch.nn.CrossEntropyLoss``
    with ``label_smoothing``, on float32 logits)."""

    def __init__(self, temperature: float = 1.0, label_smoothing: float = 0.1):
        super().__init__()
        self.temperature = temperature
        self.cross_entropy = nn.CrossEntropyLoss(label_smoothing=label_smoothing)

    @classmethod
    def from_config(cls, cfg, num_classes: Optional[int] = None, embedding_dim: Optional[int] = None):
        return cls(cfg.loss.temperature, cfg.loss.label_smoothing)

    @classmethod
    def check_config(cls, cfg) -> Iterator[Tuple[str, Any, str]]:
        for key in ("backbone_kwargs", "miner_kwargs"):
            value = dict(cfg.loss[key])
            if value:
                yield (f"loss.{key}", value, "keyword arguments of a pml loss or miner; loss.backbone ce reads "
                                            "loss.temperature and loss.label_smoothing")
        if cfg.loss.miner:
            yield ("loss.miner", cfg.loss.miner, "a miner picks pairs for a pml loss (loss.backbone pml/<LossName>); "
                                                 "ce has none: leave it empty")

    def forward(self, labels: torch.Tensor, embeddings: Optional[torch.Tensor] = None,
                logits: Optional[torch.Tensor] = None) -> torch.Tensor:
        if logits is None:
            raise ValueError("the backbone cross-entropy needs the backbone logits")
        return self.cross_entropy(logits.float() / self.temperature, labels)


class MetricLearningLoss(BackboneLoss):
    """A pytorch-metric-learning loss (and optional miner) on the backbone embeddings.

    Args:
        loss (nn.Module): a ``pytorch_metric_learning.losses`` loss.
        miner (nn.Module, optional): a ``pytorch_metric_learning.miners`` miner; its pairs or
            triplets are the loss's ``indices_tuple``.
    """

    reads_embeddings = True
    reads_logits = False

    def __init__(self, loss: nn.Module, miner: Optional[nn.Module] = None):
        super().__init__()
        self.loss = loss
        self.miner = miner

    @classmethod
    def from_config(cls, cfg, num_classes: Optional[int] = None, embedding_dim: Optional[int] = None):
        """``cfg.loss.backbone`` with ``cfg.loss.backbone_kwargs``; ``num_classes`` and
        ``embedding_size`` filled in (``embedding_dim`` defaults to ``cfg.model.embedding_dim``)."""
        loss_cls = pml_class("losses", cfg.loss.backbone[len(PML_PREFIX):])
        kwargs = pml_kwargs(dict(cfg.loss.backbone_kwargs))
        names = accepted_keywords(loss_cls)[0]
        fill = {"num_classes": num_classes,
                "embedding_size": cfg.model.embedding_dim if embedding_dim is None else embedding_dim}
        for name, value in fill.items():
            if name in names and name not in kwargs:
                if value is None:
                    raise ValueError(f"{cfg.loss.backbone} needs {name}: pass it (the training classes)")
                kwargs[name] = value
        miner = None
        if cfg.loss.miner:
            miner = pml_class("miners", cfg.loss.miner[len(PML_PREFIX):])(**pml_kwargs(dict(cfg.loss.miner_kwargs)))
        return cls(loss_cls(**kwargs), miner)

    @classmethod
    def check_config(cls, cfg) -> Iterator[Tuple[str, Any, str]]:
        yield from _check_pml("losses", "loss.backbone", cfg.loss.backbone, "loss.backbone_kwargs",
                              dict(cfg.loss.backbone_kwargs), FILLED_IN)
        if cfg.loss.miner:
            yield from _check_pml("miners", "loss.miner", cfg.loss.miner, "loss.miner_kwargs",
                                  dict(cfg.loss.miner_kwargs), {})
        elif dict(cfg.loss.miner_kwargs):
            yield ("loss.miner_kwargs", dict(cfg.loss.miner_kwargs), "keyword arguments of loss.miner, which is "
                                                                    "empty: set loss.miner pml/<MinerName>")

    def forward(self, labels: torch.Tensor, embeddings: Optional[torch.Tensor] = None,
                logits: Optional[torch.Tensor] = None) -> torch.Tensor:
        if embeddings is None:
            raise ValueError(f"{type(self.loss).__name__} needs the backbone embeddings")
        if embeddings.dtype not in (torch.float32, torch.float64):  # autocast: the loss in float32
            embeddings = embeddings.float()
        indices = self.miner(embeddings, labels) if self.miner is not None else None
        return self.loss(embeddings, labels, indices)


def backbone_loss_class(name: str):
    """The class of ``loss.backbone`` ``name``: a registered name or ``pml/<LossName>``."""
    if str(name).startswith(PML_PREFIX):
        return MetricLearningLoss
    return BACKBONE_LOSSES.get(name)


def build_backbone_loss(cfg, num_classes: Optional[int] = None, embedding_dim: Optional[int] = None) -> BackboneLoss:
    """The configured backbone loss (``num_classes``: the training classes, for proxy losses)."""
    return backbone_loss_class(cfg.loss.backbone).from_config(cfg, num_classes, embedding_dim)


def check_loss_config(cfg) -> Iterator[Tuple[str, Any, str]]:
    """``(key, value, allowed)`` for each bad ``loss.backbone``, ``loss.miner`` or their keyword
    arguments: unknown names with the closest ones, keywords a loss does not take, a missing
    pytorch-metric-learning with its install line."""
    name = cfg.loss.backbone
    if not str(name).startswith(PML_PREFIX) and name not in BACKBONE_LOSSES:
        hint = closest(name, BACKBONE_LOSSES.names())
        did = f" (did you mean {hint[0]!r}?)" if hint else ""
        yield ("loss.backbone", name, f"allowed: {', '.join(BACKBONE_LOSSES.names())} or "
                                      f"{PML_PREFIX}<LossName> (a pytorch-metric-learning loss){did}")
        return
    yield from backbone_loss_class(name).check_config(cfg)


# ------------------------------------------------------------------- pytorch-metric-learning
def _pml_module(kind: str):
    """``pytorch_metric_learning.<kind>`` (losses, miners, distances, ...); ImportError names the
    install line."""
    try:
        return importlib.import_module(f"pytorch_metric_learning.{kind}")
    except ImportError as e:
        raise ImportError(f"pytorch-metric-learning is not installed ({e}): {PML_INSTALL}") from None


def pml_names(kind: str) -> list[str]:
    """The classes of ``pytorch_metric_learning.<kind>`` a config may name (no base classes or mixins)."""
    module = _pml_module(kind)
    # Losses wrapping another loss (CrossBatchMemory, SelfSupervisedLoss) need objects a config cannot give.
    bases = {"losses": ("BaseMetricLossFunction",), "miners": ("BaseMiner",)}.get(kind, ())
    base_classes = tuple(getattr(module, b) for b in bases if hasattr(module, b)) or (nn.Module,)
    return sorted(n for n, obj in vars(module).items()
                  if inspect.isclass(obj) and issubclass(obj, base_classes) and not n.startswith("Base")
                  and not n.endswith("Mixin") and n != "GenericPairLoss")


def pml_class(kind: str, name: str):
    """``pytorch_metric_learning.<kind>.<name>``; KeyError naming the closest names."""
    names = pml_names(kind)
    if name not in names:
        hint = closest(name, names)
        did = f"; closest: {', '.join(hint)}" if hint else ""
        raise KeyError(f"pytorch-metric-learning has no {_singular(kind)} {name!r}{did}")
    return getattr(_pml_module(kind), name)


def _singular(kind: str) -> str:
    return {"losses": "loss", "miners": "miner"}.get(kind, f"{kind} class")


def accepted_keywords(cls) -> Tuple[list[str], list[str]]:
    """``(names, required)``: the keyword arguments ``cls(...)`` takes along its ``__init__`` chain
    (each ``**kwargs`` passes on to the next class in the MRO, as pml's mixins do), and those
    without a default. A base class's argument without a default is its subclass's to give
    (``GenericPairLoss(mat_based_loss)``), not the caller's: left out."""
    names, required = [], []
    first = True
    for klass in cls.__mro__:
        if klass in (nn.Module, object) or "__init__" not in vars(klass):
            continue
        passes_on = False
        for p in inspect.signature(klass.__init__).parameters.values():
            if p.kind is p.VAR_KEYWORD:
                passes_on = True
            elif not first and p.default is p.empty:
                continue
            elif p.name != "self" and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) and p.name not in names:
                names.append(p.name)
                if p.default is p.empty:
                    required.append(p.name)
        first = False
        if not passes_on:
            break
    return names, required


def pml_kwargs(kwargs: Mapping) -> dict:
    """Config keyword arguments with the pml objects named by class (``distance: CosineSimilarity``)
    built (default arguments)."""
    out = dict(kwargs)
    for key, module in OBJECT_KWARGS.items():
        if isinstance(out.get(key), str):
            out[key] = pml_class(module, out[key])()
    return out


def _check_pml(kind: str, key: str, value: str, kwargs_key: str, kwargs: dict,
               filled: Mapping[str, str]) -> Iterator[Tuple[str, Any, str]]:
    name = value[len(PML_PREFIX):]
    try:
        names = pml_names(kind)
    except ImportError as e:
        yield key, value, str(e)
        return
    if name not in names:
        hint = closest(name, names)
        did = f"; closest: {', '.join(PML_PREFIX + h for h in hint)}" if hint else ""
        yield key, value, f"pytorch-metric-learning has no {_singular(kind)} {name!r}{did}"
        return
    accepted, required = accepted_keywords(getattr(_pml_module(kind), name))
    unknown = [k for k in kwargs if k not in accepted]
    if unknown:
        hints = [f"{k} (closest: {', '.join(closest(k, accepted))})" if closest(k, accepted) else k for k in unknown]
        yield (kwargs_key, kwargs, f"{value} takes no keyword argument {', '.join(hints)}; it takes: "
                                   f"{', '.join(accepted)}")
        return
    missing = [k for k in required if k not in kwargs and k not in filled]
    if missing:
        yield kwargs_key, kwargs, f"{value} needs {', '.join(missing)}: give it in {kwargs_key}"
        return
    for arg, module in OBJECT_KWARGS.items():
        given = kwargs.get(arg)
        if isinstance(given, str) and given not in pml_names(module):
            hint = closest(given, pml_names(module))
            did = f"; closest: {', '.join(hint)}" if hint else ""
            yield kwargs_key, kwargs, f"{arg}: pytorch-metric-learning has no {module} class {given!r}{did}"
