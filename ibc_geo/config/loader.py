"""Defaults < YAML file (which may inherit ``_BASE_``) < ``KEY VALUE`` pairs, then invariants.

OmegaConf structured configs do the typed merging; this module adds the error messages a user
needs (which key, from which file or the command line, the closest valid keys) and the checks
that span several keys.
"""
from __future__ import annotations

import logging
import math
import os
import warnings
from typing import Any, Iterable, Mapping, Sequence

import yaml
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from ibc_geo.utils.errors import UserError
from ibc_geo.config.schema import CHOICES, Config
from ibc_geo.evaluation.metrics import metric_names
from ibc_geo.utils.registry import closest

logger = logging.getLogger("ibc_geo")

BASE_KEY = "_BASE_"
COMMAND_LINE = "the command line"


class ConfigError(UserError, ValueError):
    """A bad config: unknown key, wrong type, value outside its choices, broken invariant."""


def default_config() -> DictConfig:
    """The schema's defaults as a typed, struct-mode OmegaConf config."""
    cfg = OmegaConf.structured(Config)
    OmegaConf.set_struct(cfg, True)
    for section in cfg.values():  # Dict[str, Any] keys (e.g. loss.backbone_kwargs) take any keys
        for value in (section.values() if OmegaConf.is_dict(section) else ()):
            if _free_form(value):
                OmegaConf.set_struct(value, False)
    return cfg


def _free_form(node: Any) -> bool:
    """A ``Dict[str, Any]`` key of the schema: a mapping of keyword arguments, not a section."""
    return OmegaConf.is_dict(node) and OmegaConf.get_type(node) is dict


def _all_keys(node: Any, prefix: str = "") -> list[str]:
    keys = []
    for key, value in node.items():
        full = f"{prefix}{key}"
        keys.append(full)
        if isinstance(value, Mapping) or OmegaConf.is_dict(value):
            keys.extend(_all_keys(value, full + "."))
    return keys


def _check_known_keys(layer: Mapping, schema: DictConfig, source: str, prefix: str = "") -> None:
    for key, value in layer.items():
        full = f"{prefix}{key}"
        if key not in schema:
            valid = _all_keys(default_config())
            hint = closest(full, valid)
            did_you_mean = f" Closest valid keys: {', '.join(hint)}." if hint else ""
            raise ConfigError(f"unknown config key {full!r} in {source}.{did_you_mean}")
        child = schema[key]
        if _free_form(child):
            if not isinstance(value, Mapping):
                raise ConfigError(f"config key {full!r} in {source} takes a mapping of keyword arguments, e.g. "
                                  f"{{margin: 0.1}}, got {value!r}")
        elif OmegaConf.is_dict(child):
            if not isinstance(value, Mapping):
                raise ConfigError(
                    f"config key {full!r} in {source} is a section; expected a mapping of its keys, "
                    f"got {value!r}"
                )
            _check_known_keys(value, child, source, full + ".")


def read_yaml(path: str | os.PathLike) -> dict:
    """Read one YAML file, following ``_BASE_`` (a path relative to the file) recursively."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise ConfigError(f"config file not found: {path}")
    with open(path, encoding="utf-8") as f:
        try:
            data = yaml.safe_load(f) or {}
        except yaml.YAMLError as e:
            raise ConfigError(f"config file {path} is not valid YAML: {e}") from e
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping of keys, got {type(data).__name__}")
    return data


def _layers_of_file(path: str, seen: tuple = ()) -> list[tuple[dict, str]]:
    """[(layer, source)] from the farthest base to ``path`` itself."""
    real = os.path.realpath(path)
    if real in seen:
        raise ConfigError(f"config file {path} inherits itself through _BASE_: {' -> '.join(seen)}")
    data = read_yaml(path)
    if not data:
        warnings.warn(f"config file {path} is empty: every key keeps its schema default (the paper's CUB "
                      f"recipe: ResNet-50 from ImageNet for 70 epochs)", UserWarning, stacklevel=2)
    base = data.pop(BASE_KEY, None)
    layers = []
    if base is not None:
        if not isinstance(base, str):
            raise ConfigError(f"{BASE_KEY} in {path} must be a file path, got {base!r}")
        base_path = base if os.path.isabs(base) else os.path.join(os.path.dirname(path), base)
        if not os.path.isfile(base_path):
            raise ConfigError(f"config file {path} inherits {BASE_KEY}: {base}, which is not found "
                              f"(looked for {base_path}, relative to {path})")
        layers.extend(_layers_of_file(base_path, seen + (real,)))
    layers.append((data, f"config file {path}"))
    return layers


def parse_overrides(pairs: Sequence[str]) -> dict:
    """``["graph.k", "5", "train.lr_drop_epochs", "[3, 5]"]`` -> nested dict of YAML-parsed values."""
    if len(pairs) % 2:
        raise ConfigError(
            f"command-line overrides come as KEY VALUE pairs; got an odd number of words: {' '.join(pairs)}"
        )
    nested: dict = {}
    for key, raw in zip(pairs[0::2], pairs[1::2]):
        if key.startswith("-"):
            raise ConfigError(f"expected a KEY of a KEY VALUE pair on {COMMAND_LINE}, got option {key!r}")
        try:
            value = yaml.safe_load(raw) if raw != "" else ""
        except yaml.YAMLError:
            value = raw
        node = nested
        parts = key.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {key!r} on {COMMAND_LINE} sets a key below a value")
        node[parts[-1]] = value
    return nested


def _merge_layer(cfg: DictConfig, layer: dict, source: str) -> DictConfig:
    _check_known_keys(layer, cfg, source)
    try:
        return OmegaConf.merge(cfg, layer)
    except OmegaConfBaseException as e:
        key = getattr(e, "full_key", None) or "?"
        value = getattr(e, "value", None)
        msg = str(e).splitlines()[0]
        if "is not a ListConfig" in msg:
            raise ConfigError(f"config key {key!r} in {source} takes a list, e.g. {key} [{value}], got the "
                              f"single value {value!r}") from None
        raise ConfigError(f"bad value for config key {key!r} in {source}: {value!r} ({msg})") from None


def _topology_class(name: str):
    from ibc_geo.graph import TOPOLOGIES

    return TOPOLOGIES.get(name)


def _registered_names(kind: str) -> list[str]:
    if kind == "data.name":
        from ibc_geo.data import DATASETS

        return DATASETS.names()
    from ibc_geo.graph import TOPOLOGIES

    return TOPOLOGIES.names()


def check_config(cfg: DictConfig) -> None:
    """Invariants across keys; raises ConfigError naming key, value and what is allowed."""

    def fail(key: str, value: Any, allowed: str) -> None:
        raise ConfigError(f"bad value for config key {key!r}: {value!r}; {allowed}")

    def choice(key: str, allowed: Iterable[str]) -> None:
        value = OmegaConf.select(cfg, key)
        allowed = list(allowed)
        if value not in allowed:
            hint = closest(value, allowed)
            did = f" (did you mean {hint[0]!r}?)" if hint else ""
            fail(key, value, f"allowed: {', '.join(allowed)}{did}")

    for key, value in flatten_config(OmegaConf.to_container(cfg)).items():
        numbers = value if isinstance(value, list) else [value]
        if any(isinstance(v, float) and not math.isfinite(v) for v in numbers):
            fail(key, value, "must be a finite number")
    if cfg.train.weight_decay < 0:
        fail("train.weight_decay", cfg.train.weight_decay, "must be >= 0")
    for key, allowed in CHOICES.items():
        choice(key, allowed)
    choice("data.name", _registered_names("data.name"))
    choice("graph.topology", _registered_names("graph.topology"))

    P, K = cfg.sampler.classes_per_batch, cfg.sampler.samples_per_class
    if P < 2:
        fail("sampler.classes_per_batch", P, "need at least 2 classes per batch")
    if K < 2:
        fail("sampler.samples_per_class", K, "need at least 2 samples per class (positive pairs)")
    batch = P * K
    if cfg.sampler.batch_size not in (0, batch):
        fail("sampler.batch_size", cfg.sampler.batch_size,
             f"must equal classes_per_batch x samples_per_class = {P} x {K} = {batch} (or 0)")
    for key, value, allowed in _topology_class(cfg.graph.topology).check_config(cfg):
        fail(key, value, allowed)
    if cfg.model.embedding_dim < 1:
        fail("model.embedding_dim", cfg.model.embedding_dim, "must be positive")
    if cfg.mpn.num_heads < 1 or cfg.model.embedding_dim % cfg.mpn.num_heads:
        fail("mpn.num_heads", cfg.mpn.num_heads,
             f"must divide model.embedding_dim = {cfg.model.embedding_dim}")
    for key in ("mpn.input_scale", "mpn.attention_scale_init"):
        if not OmegaConf.select(cfg, key) > 0:
            fail(key, OmegaConf.select(cfg, key), "must be a finite number > 0")
    if cfg.mpn.attention_scale_init > 100:
        fail("mpn.attention_scale_init", cfg.mpn.attention_scale_init, "must be at most 100 (the cosine scale's clamp)")
    if cfg.mpn.input_scale != 1.0 and not cfg.mpn.input_norm:
        fail("mpn.input_scale", cfg.mpn.input_scale, "scales the normalised input: needs mpn.input_norm true")
    if cfg.mpn.num_layers < 1:
        fail("mpn.num_layers", cfg.mpn.num_layers, "must be >= 1 (use graph.topology none for no MPN)")
    for key in ("mpn.dropout", "data.random_erasing", "loss.label_smoothing"):
        value = OmegaConf.select(cfg, key)
        if not 0.0 <= value < 1.0:
            fail(key, value, "must be in [0, 1)")
    if cfg.loss.temperature <= 0:
        fail("loss.temperature", cfg.loss.temperature, "must be > 0")
    for key in ("loss.backbone_weight", "loss.mpn_weight"):
        if OmegaConf.select(cfg, key) < 0:
            fail(key, OmegaConf.select(cfg, key), "must be >= 0")
    from ibc_geo.nn.losses import check_loss_config

    for key, value, allowed in check_loss_config(cfg):  # loss/miner names, their keywords, pml installed
        fail(key, value, allowed)
    for key in ("loss.lr_mult", "train.backbone_lr_mult", "train.warmup_epochs"):
        if OmegaConf.select(cfg, key) < 0:
            fail(key, OmegaConf.select(cfg, key), "must be >= 0")
    if not 0.0 <= cfg.train.momentum < 1.0:
        fail("train.momentum", cfg.train.momentum, "must be in [0, 1)")
    if cfg.train.epochs < 1:
        fail("train.epochs", cfg.train.epochs, "must be >= 1")
    if cfg.train.lr <= 0:
        fail("train.lr", cfg.train.lr, "must be > 0")
    if any(e < 1 for e in cfg.train.lr_drop_epochs):
        fail("train.lr_drop_epochs", list(cfg.train.lr_drop_epochs), "epochs are numbered from 1")
    for key, low in (("eval.every", 1), ("train.log_every", 1), ("eval.batch_size", 1), ("eval.chunk_size", 1),
                     ("eval.kmeans_iters", 1), ("eval.kmeans_redo", 1), ("data.workers", 0), ("train.iters_per_epoch", 0)):
        value = OmegaConf.select(cfg, key)
        if value < low:
            fail(key, value, f"must be >= {low}")
    if not 0.0 < cfg.train.lr_drop_factor <= 1.0:
        fail("train.lr_drop_factor", cfg.train.lr_drop_factor, "must be in (0, 1]")
    if not cfg.eval.recall_k or any(k < 1 for k in cfg.eval.recall_k):
        fail("eval.recall_k", list(cfg.eval.recall_k), "a non-empty list of positive integers")
    metrics = metric_names(cfg.eval.recall_k, nmi=cfg.eval.nmi)
    if cfg.eval.metric not in metrics:
        fail("eval.metric", cfg.eval.metric, f"allowed: {', '.join(metrics)}")
    from ibc_geo.evaluation.refine import Refinement, RefinementError

    try:  # the refinement knows its keys and their ranges
        Refinement.from_config(cfg)
    except RefinementError as e:
        raise ConfigError(f"bad refinement config: {e}") from None
    vc = cfg.data.val_classes
    if vc < 0 or (vc >= 1 and vc != int(vc)):
        fail("data.val_classes", vc, "a fraction in [0, 1) or a whole number of classes")
    if cfg.eval.selection == "val" and vc == 0:
        fail("data.val_classes", vc,
             "eval.selection val needs held-out validation classes: set data.val_classes "
             "(e.g. 0.15) or eval.selection test")
    if not 0.0 < cfg.data.crop_scale <= 1.0:
        fail("data.crop_scale", cfg.data.crop_scale, "must be in (0, 1]")
    if len(cfg.data.mean) != 3:
        fail("data.mean", list(cfg.data.mean), "three numbers, one per RGB channel")
    if len(cfg.data.std) != 3 or any(not s > 0 for s in cfg.data.std):
        fail("data.std", list(cfg.data.std), "three positive numbers, one per RGB channel")
    if cfg.data.image_size < 16:
        fail("data.image_size", cfg.data.image_size, "must be >= 16")
    out = str(cfg.output_dir).strip()
    if not out or os.path.realpath(out) in (os.path.realpath(os.sep), os.path.realpath(os.getcwd()),
                                            os.path.realpath(os.path.expanduser("~"))):
        fail("output_dir", cfg.output_dir, "a folder of its own for the run's files (not empty, '.', the "
                                           "file-system root or the home folder), e.g. output/my_run")
    pre = cfg.model.pretrained
    if pre not in ("imagenet", "hub", "none") and not os.path.isfile(pre):
        fail("model.pretrained", pre, "imagenet, hub, none, or the path of an existing local .pth / .safetensors file")


def resolve_backbone_preprocessing(cfg: DictConfig) -> DictConfig:
    """Fill ``data.mean``, ``data.std`` and ``data.image_size`` left at "the backbone's" (``[]``,
    ``[]``, ``0``) from the backbone registry (:mod:`ibc_geo.nn.backbones`); warn, naming both
    values, where a pretrained backbone's own preprocessing differs from a value the config sets.
    ``data.resize_size 0`` and ``data.interpolation ""`` stay as they are: the transforms ask the
    backbone. An unknown backbone is a ConfigError naming the closest names."""
    from ibc_geo.nn.backbones import BackboneError, backbone_entry

    try:
        entry = backbone_entry(cfg.model.backbone)
        entry.check(cfg.model.pooling, cfg.model.pretrained, dict(cfg.model.backbone_kwargs))
        own = entry.preprocessing(dict(cfg.model.backbone_kwargs))
    except BackboneError as e:
        raise ConfigError(f"bad backbone config: {e}") from None
    pretrained = cfg.model.pretrained not in ("none", "")
    for key, value in (("mean", list(own.mean)), ("std", list(own.std)), ("image_size", own.image_size)):
        current = OmegaConf.select(cfg, f"data.{key}")
        current = list(current) if OmegaConf.is_list(current) else current
        if current in ([], 0):
            OmegaConf.update(cfg, f"data.{key}", value, merge=False)
        elif pretrained and current != value:
            logger.warning("data.%s %s differs from what the pretrained backbone %s expects (%s); keeping %s",
                           key, current, cfg.model.backbone, value, current)
    return cfg


def load_config(cfg_file: str | None = None, overrides: Sequence[str] = (), check: bool = True,
                layers: Sequence[tuple] = ()) -> DictConfig:
    """Defaults < ``cfg_file`` (with its ``_BASE_`` chain) < ``overrides`` < each ``(KEY VALUE list,
    source)`` of ``layers`` (e.g. an ablation grid point, named as its source in errors); checked,
    read-only."""
    cfg = default_config()
    if cfg_file is not None:
        for layer, source in _layers_of_file(cfg_file):
            cfg = _merge_layer(cfg, layer, source)
    if overrides:
        cfg = _merge_layer(cfg, parse_overrides(list(overrides)), COMMAND_LINE)
    for pairs, source in layers:
        cfg = _merge_layer(cfg, parse_overrides(list(pairs)), source)
    if check:
        resolve_backbone_preprocessing(cfg)
        check_config(cfg)
    OmegaConf.set_readonly(cfg, True)
    return cfg


def to_yaml(cfg: DictConfig) -> str:
    return OmegaConf.to_yaml(cfg)


def save_config(cfg: DictConfig, path: str | os.PathLike) -> None:
    """Write the resolved config atomically; ``--cfg path`` reproduces the run."""
    from ibc_geo.utils.io import atomic_write_text

    atomic_write_text(path, to_yaml(cfg))


def config_to_dict(cfg: DictConfig) -> dict:
    return OmegaConf.to_container(cfg, resolve=True)


def config_from_dict(data: Mapping, check: bool = True) -> DictConfig:
    """Rebuild a config from ``config_to_dict`` output (e.g. the copy kept in a checkpoint)."""
    cfg = _merge_layer(default_config(), dict(data), "a saved config")
    if check:
        resolve_backbone_preprocessing(cfg)
        check_config(cfg)
    OmegaConf.set_readonly(cfg, True)
    return cfg


def flatten_config(d: Mapping, prefix: str = "") -> dict:
    """``{"graph": {"k": 5}}`` -> ``{"graph.k": 5}``."""
    out = {}
    for k, v in d.items():
        if isinstance(v, Mapping):
            out.update(flatten_config(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def config_differences(saved: Mapping, current: Mapping, ignore: Iterable[str] = ()) -> list[str]:
    """``["key: saved -> current", ...]`` for the keys where two config dicts differ.

    ``ignore`` lists keys to pass over; an entry ending in ``.`` passes over a whole section.
    """
    # A key the saved config lacks was added after it was written: the run had its default.
    a = {**flatten_config(config_to_dict(default_config())), **flatten_config(saved)}
    b = flatten_config(current)
    ignore = tuple(ignore)

    def ignored(key: str) -> bool:  # "train." ignores a whole section
        return any(key == i or (i.endswith(".") and key.startswith(i)) for i in ignore)

    return [f"{k}: {a.get(k, '<absent>')!r} -> {b.get(k, '<absent>')!r}"
            for k in sorted(set(a) | set(b)) if not ignored(k) and a.get(k) != b.get(k)]
