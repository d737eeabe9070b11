"""Ablation grids: which config keys to vary, over which values, and which keys matter only
for some values of another key.

A grid file (YAML, see ``configs/ablations/``) holds these sections::

    grid:                     # config key -> list of values; points = cartesian product, in file order
      graph.topology: [none, self, random, knn, full, same_class]
      graph.k: [5, 10]
    tie:                      # tied key -> {parent key: [parent values where the tied key is varied]}
      graph.k: {graph.topology: [knn, random]}
    seeds: [0, 1]             # optional default seeds; ``--seeds`` overrides; default: the config's seed
    reference: {graph.topology: none}   # optional: the point every other is compared with, seed by seed

or, instead of ``grid:`` and ``tie:``, an explicit list of points (for ablations that are not a
product, e.g. variants of one topology, then the best variant on other topologies)::

    points:
      - {graph.topology: none}
      - {graph.topology: full}
      - {graph.topology: full, mpn.attention_logits: cosine}

Rules:

- ``grid`` keys are leaf keys of the config schema (``ibc_geo/config/schema.py``); each maps to a
  non-empty list of distinct values (a list-valued key takes a list of lists). YAML 1.1 reads
  ``1e-4`` as a string; the config loader converts it for float keys, so it works either way.
  ``seed``, ``output_dir``, ``train.resume`` and ``train.overwrite`` are set by the runner per run.
- A tied key is varied only at the points where every parent takes one of the listed values;
  elsewhere it is left out of the point (the run keeps the base config's value) and the points
  that become equal collapse into one. Without the tie above, ``graph.k`` would multiply the
  ``full`` point into copies that differ only in a key ``full`` ignores. A tied key and its parents
  must all be grid keys, and the listed parent values must be among the parent's grid values.
  Ties may chain (a parent may itself be tied); cycles are rejected.
- ``points:`` entries are mappings of leaf keys to scalar or list values, distinct, at least one
  key each. A point's name is made from its own keys only, so adding points to the list later
  keeps the names, and the finished runs, of the others.
- ``reference:`` names one point by its key values (exactly as the point lists them). The report
  then gives, for every other point and metric, the mean and std over the shared seeds of the
  per-seed difference to the reference (seeds are paired: one seed, the same batches).
- Keys known to have no effect under some value of another key (:func:`no_effect_rule`, e.g.
  ``graph.k`` under ``graph.topology full``) are checked per point once the configs are built
  (:func:`check_point_effect`): a point that varies such a key where it has no effect is rejected,
  whether the other key comes from the grid or from the base config.

A point's name is its ``label=value`` pairs joined by commas, e.g. ``topology=knn,k=10``: the label
is the key's last component (the full key where two grid keys share it), and the value is made
filesystem-safe. The runner trains each point and seed in ``<output_dir>/<name>/seed=<seed>``.
"""
from __future__ import annotations

import functools
import itertools
import json
import os
import re
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import yaml
from omegaconf import OmegaConf

from ibc_geo.config import ConfigError, default_config
from ibc_geo.utils.registry import closest

GRID_SECTIONS = ("grid", "tie", "seeds", "points", "reference")

# Keys the runner sets for every run, with what to use instead.
RESERVED_KEYS = {
    "seed": "list seeds under 'seeds:' in the grid file or pass --seeds",
    "output_dir": "set the ablation's output_dir in the base config or as a KEY VALUE override",
    "train.resume": "the runner resumes unfinished runs by itself",
    "train.overwrite": "the runner restarts runs that never saved a checkpoint by itself",
    "eval.metric": "every point must share the selection metric that sorts the table",
    "eval.selection": "every point must share the selection split that sorts the table",
}

def no_effect_rule(key: str):
    """``(other key, values of it under which ``key`` has no effect)``, or ``None``; asked of the
    registered topologies, so that a user's topology is covered too: a ``graph.*`` key has no
    effect under the topologies whose ``uses`` lacks it, the MPN's keys under those without
    message passing."""
    from ibc_geo.graph import TOPOLOGIES

    classes = {name: TOPOLOGIES.get(name) for name in TOPOLOGIES.names()}
    if key.startswith("graph.") and key != "graph.topology":
        return "graph.topology", tuple(n for n, c in classes.items() if key not in c.uses)
    if key.startswith("mpn.") or key == "loss.mpn_weight":
        return "graph.topology", tuple(n for n, c in classes.items() if not c.message_passing)
    return None


class GridError(ConfigError):
    """An invalid ablation grid: unknown or reserved key, bad tie, bad values, invalid point."""


@functools.lru_cache(maxsize=1)
def _schema_keys() -> tuple[list[str], list[str]]:
    """(leaf keys, section keys) of the config schema, dotted (the schema is fixed at import)."""
    leaves, sections = [], []

    def walk(node, prefix):
        for key, value in node.items():
            full = f"{prefix}{key}"
            if OmegaConf.is_dict(value):
                sections.append(full)
                walk(value, full + ".")
            else:
                leaves.append(full)

    walk(default_config(), "")
    return leaves, sections


def _check_config_key(key: Any, where: str, source: str) -> None:
    leaves, sections = _schema_keys()
    if not isinstance(key, str):
        raise GridError(f"{where} in {source}: expected a dotted config key such as 'graph.k', got {key!r}")
    if key in sections:
        raise GridError(
            f"{where} {key!r} in {source} is a config section; name one of its keys, "
            f"e.g. {', '.join(k for k in leaves if k.startswith(key + '.'))}"
        )
    if key not in leaves:
        hint = closest(key, leaves)
        did = f" Closest valid keys: {', '.join(hint)}." if hint else ""
        raise GridError(f"unknown config key {key!r} as {where} in {source}.{did}")
    if key in RESERVED_KEYS:
        raise GridError(f"{where} {key!r} in {source} cannot be varied by a grid: {RESERVED_KEYS[key]}")


def _key_of(value: Any) -> str:
    """A hashable identity for a grid value (values may be lists)."""
    return json.dumps(value, sort_keys=True)


_UNSAFE = re.compile(r"[^A-Za-z0-9._+\-]+")


def format_value(value: Any) -> str:
    """Filesystem-safe text of a grid value: ``knn``, ``10``, ``0.5``, ``true``, ``31_51``."""
    if isinstance(value, bool):
        text = "true" if value else "false"
    elif value is None:
        text = "null"
    elif isinstance(value, (list, tuple)):
        text = "_".join(format_value(v) for v in value) or "empty"
    else:
        text = str(value)
    return _UNSAFE.sub("_", text) or "_"


def override_value(value: Any) -> str:
    """The KEY VALUE text of ``value`` that the config loader parses back to ``value``.

    Plain where YAML reads the text back unchanged (``knn``, ``10``), JSON otherwise (``"yes"``).
    """
    if isinstance(value, str) and _UNSAFE.sub("", value) == value:
        try:
            if yaml.safe_load(value) == value:
                return value
        except yaml.YAMLError:
            pass
    return json.dumps(value)


@dataclass(frozen=True)
class GridPoint:
    """One point of a grid: the grid keys varied here and their values, in grid order."""

    values: tuple  # ((key, value), ...): only the keys that are active at this point
    name: str  # e.g. "topology=knn,k=10"

    def as_dict(self) -> dict:
        return dict(self.values)

    def overrides(self) -> list[str]:
        """``[key, value, key, value, ...]`` for :func:`ibc_geo.config.load_config`."""
        return [text for key, value in self.values for text in (key, override_value(value))]


@dataclass(frozen=True)
class Grid:
    """A parsed, checked grid file (see the module docstring for the format)."""

    values: dict  # key -> list of values, in file order
    ties: dict = field(default_factory=dict)  # tied key -> {parent key: [values]}
    seeds: list | None = None  # default seeds, or None (use the config's seed)
    source: str = "a grid"  # where it came from, for messages
    explicit: list | None = None  # the 'points:' list (dicts), or None for the cartesian 'grid:'
    reference: dict | None = None  # the 'reference:' point's key values, or None

    @property
    def keys(self) -> list[str]:
        return list(self.values)

    def labels(self) -> dict:
        """key -> label in point names: the last component, or the full key if that is shared."""
        last = [key.rsplit(".", 1)[-1] for key in self.values]
        return {key: (lab if last.count(lab) == 1 else key) for key, lab in zip(self.values, last)}

    def _active(self, combo: dict) -> dict:
        """key -> whether it is varied at the grid combination ``combo``."""
        active: dict = {}

        def is_active(key: str) -> bool:
            if key not in active:
                parents = self.ties.get(key, {})
                active[key] = all(
                    is_active(parent) and _key_of(combo[parent]) in {_key_of(v) for v in allowed}
                    for parent, allowed in parents.items()
                )
            return active[key]

        for key in self.values:
            is_active(key)
        return active

    def _combinations(self):
        """The key values of each point, before de-duplication: the explicit list, or the product."""
        if self.explicit is not None:
            for entry in self.explicit:
                yield tuple((k, entry[k]) for k in self.values if k in entry)
            return
        for combo_values in itertools.product(*self.values.values()):
            combo = dict(zip(self.values, combo_values))
            active = self._active(combo)
            yield tuple((k, v) for k, v in combo.items() if active[k])

    def points(self) -> list[GridPoint]:
        """All distinct points: the ``points:`` list in file order, or the cartesian product in the
        order of the file's keys."""
        labels = self.labels()
        points, seen, names = [], set(), {}
        for values in self._combinations():
            identity = _key_of([[k, v] for k, v in values])
            if identity in seen:
                continue
            seen.add(identity)
            name = ",".join(f"{format_value(labels[k])}={format_value(v)}" for k, v in values) or "base"
            if name in names:
                raise GridError(
                    f"grid points {names[name]} and {identity} in {self.source} get the same folder "
                    f"name {name!r} once made filesystem-safe; make the values differ in letters or digits"
                )
            names[name] = identity
            points.append(GridPoint(values=values, name=name))
        return points

    def reference_point(self) -> GridPoint | None:
        """The point named by ``reference:``, or ``None`` without one."""
        if self.reference is None:
            return None
        wanted = _key_of(sorted([k, v] for k, v in self.reference.items()))
        for point in self.points():
            if _key_of(sorted([k, v] for k, v in point.values)) == wanted:
                return point
        raise GridError(f"reference {self.reference!r} in {self.source} is not one of its points")


def _check_values(key: str, values: Any, source: str) -> list:
    if not isinstance(values, list) or not values:
        raise GridError(
            f"grid key {key!r} in {source} must map to a non-empty list of values, e.g. "
            f"'{key}: [a, b]', got {values!r} (a list-valued key takes a list of lists)"
        )
    seen = set()
    for value in values:
        if isinstance(value, Mapping):
            raise GridError(f"grid key {key!r} in {source}: values must be scalars or lists, got mapping {value!r}")
        if _key_of(value) in seen:
            raise GridError(f"grid key {key!r} in {source} lists the value {value!r} twice")
        seen.add(_key_of(value))
    return list(values)


def _check_seeds(seeds: Any, source: str) -> list[int]:
    if (not isinstance(seeds, (list, tuple)) or not seeds
            or any(isinstance(s, bool) or not isinstance(s, int) or s < 0 for s in seeds)):
        raise GridError(f"seeds in {source} must be a non-empty list of non-negative integers, got {seeds!r}")
    if len(set(seeds)) != len(seeds):
        raise GridError(f"seeds in {source} repeat a seed: {list(seeds)}")
    return list(seeds)


def _check_acyclic(ties: dict, source: str) -> None:
    state: dict = {}

    def visit(key: str, path: tuple) -> None:
        if state.get(key) == "done":
            return
        if key in path:
            cycle = " -> ".join(path[path.index(key):] + (key,))
            raise GridError(f"ties in {source} form a cycle: {cycle}")
        for parent in ties.get(key, {}):
            visit(parent, path + (key,))
        state[key] = "done"

    for key in ties:
        visit(key, ())


def parse_grid(data: Any, source: str = "a grid") -> Grid:
    """Check the content of a grid file and return the :class:`Grid`; raises :class:`GridError`."""
    if not isinstance(data, Mapping):
        raise GridError(f"{source} must hold a mapping with sections {', '.join(GRID_SECTIONS)}, got {data!r}")
    for section in data:
        if section not in GRID_SECTIONS:
            hint = closest(str(section), GRID_SECTIONS)
            did = f" (did you mean {hint[0]!r}?)" if hint else ""
            raise GridError(
                f"unknown section {section!r} in {source}{did}; allowed: {', '.join(GRID_SECTIONS)}"
            )
    if "points" in data:
        return _parse_points(data, source)
    grid = data.get("grid")
    if not isinstance(grid, Mapping) or not grid:
        raise GridError(
            f"{source} needs a non-empty 'grid:' mapping of config keys to lists of values, "
            f"e.g. 'grid: {{graph.topology: [none, full]}}', got {grid!r}"
        )
    values = {}
    for key, vals in grid.items():
        _check_config_key(key, "grid key", source)
        values[key] = _check_values(key, vals, source)

    raw_ties = data.get("tie") or {}
    if not isinstance(raw_ties, Mapping):
        raise GridError(f"'tie:' in {source} must map tied keys to {{parent key: [values]}}, got {raw_ties!r}")
    ties = {}
    for key, parents in raw_ties.items():
        _check_config_key(key, "tied key", source)
        if key not in values:
            raise GridError(
                f"tied key {key!r} in {source} is not varied by 'grid:' (grid keys: {', '.join(values)}); "
                f"add it to 'grid:' or remove its tie"
            )
        if not isinstance(parents, Mapping) or not parents:
            raise GridError(
                f"tie of {key!r} in {source} must map parent keys to lists of their values, "
                f"e.g. '{key}: {{graph.topology: [knn]}}', got {parents!r}"
            )
        ties[key] = {}
        for parent, allowed in parents.items():
            _check_config_key(parent, f"parent of tied key {key!r}", source)
            if parent not in values:
                raise GridError(
                    f"tied key {key!r} in {source} is tied to {parent!r}, which 'grid:' does not vary "
                    f"(grid keys: {', '.join(values)}); add {parent!r} to 'grid:' or remove the tie"
                )
            if not isinstance(allowed, list) or not allowed:
                raise GridError(
                    f"tie of {key!r} to {parent!r} in {source} must list values of {parent!r}, got {allowed!r}"
                )
            grid_vals = {_key_of(v) for v in values[parent]}
            for value in allowed:
                if _key_of(value) not in grid_vals:
                    hint = closest(str(value), [str(v) for v in values[parent]])
                    did = f" (did you mean {hint[0]!r}?)" if hint else ""
                    raise GridError(
                        f"tie of {key!r} in {source} lists {parent!r} value {value!r}, which is not among "
                        f"the grid's values of {parent!r}: {values[parent]}{did}"
                    )
            ties[key][parent] = list(allowed)
    _check_acyclic(ties, source)

    seeds = data.get("seeds")
    if seeds is not None:
        seeds = _check_seeds(seeds, source)
    grid = Grid(values=values, ties=ties, seeds=seeds, source=source,
                reference=_check_reference(data.get("reference"), source))
    grid.reference_point()  # raises unless it names a point
    return grid


def _check_reference(reference: Any, source: str) -> dict | None:
    if reference is None:
        return None
    if not isinstance(reference, Mapping) or not reference:
        raise GridError(f"'reference:' in {source} must map config keys to the values of one point, "
                        f"e.g. 'reference: {{graph.topology: none}}', got {reference!r}")
    for key in reference:
        _check_config_key(key, "reference key", source)
    return dict(reference)


def _parse_points(data: Mapping, source: str) -> Grid:
    """The ``points:`` form of a grid file (see the module docstring)."""
    for section in ("grid", "tie"):
        if section in data:
            raise GridError(f"{source} has both 'points:' and '{section}:'; a grid file is either a product "
                            f"('grid:' with optional 'tie:') or a list of points ('points:')")
    entries = data["points"]
    if not isinstance(entries, list) or not entries:
        raise GridError(f"'points:' in {source} must be a non-empty list of mappings, e.g. "
                        f"'points: [{{graph.topology: none}}, {{graph.topology: full}}]', got {entries!r}")
    values: dict = {}
    for i, entry in enumerate(entries):
        if not isinstance(entry, Mapping) or not entry:
            raise GridError(f"point {i + 1} of {source} must be a non-empty mapping of config keys to values, "
                            f"got {entry!r}")
        for key, value in entry.items():
            _check_config_key(key, f"key of point {i + 1}", source)
            if isinstance(value, Mapping):
                raise GridError(f"point {i + 1} of {source}: {key!r} must be a scalar or a list, got {value!r}")
            known = values.setdefault(key, [])
            if _key_of(value) not in {_key_of(v) for v in known}:
                known.append(value)
    identities = [_key_of(sorted([k, v] for k, v in entry.items())) for entry in entries]
    for i, identity in enumerate(identities):
        if identity in identities[:i]:
            raise GridError(f"point {i + 1} of {source} repeats point {identities.index(identity) + 1}: "
                            f"{dict(entries[i])!r}")
    seeds = data.get("seeds")
    if seeds is not None:
        seeds = _check_seeds(seeds, source)
    grid = Grid(values=values, seeds=seeds, source=source, explicit=[dict(e) for e in entries],
                reference=_check_reference(data.get("reference"), source))
    grid.reference_point()
    return grid


def load_grid(path: str | os.PathLike) -> Grid:
    """Read and check a grid file; raises :class:`GridError` naming the file."""
    path = os.fspath(path)
    source = f"grid file {path}"
    if not os.path.isfile(path):
        raise GridError(f"grid file not found: {path}")
    with open(path, encoding="utf-8") as f:
        try:
            data = yaml.safe_load(f)
        except yaml.YAMLError as e:
            raise GridError(f"{source} is not valid YAML: {e}") from e
    return parse_grid(data, source)


def check_seeds(seeds: Sequence[int], source: str = "--seeds") -> list[int]:
    return _check_seeds(list(seeds), source)


def check_point_effect(grid: Grid, point: GridPoint, cfg) -> None:
    """Reject a point that varies a key where it has no effect (see :func:`no_effect_rule`)."""
    for key, _ in point.values:
        rule = no_effect_rule(key)
        if rule is None:
            continue
        other, no_effect = rule
        value = OmegaConf.select(cfg, other)
        if value not in no_effect:
            continue
        if other in grid.values:
            useful = [v for v in grid.values[other] if v not in no_effect]
            fix = (f"tie it: 'tie: {{{key}: {{{other}: [{', '.join(map(str, useful))}]}}}}'" if useful
                   else f"drop {key!r} from the grid")
        else:
            fix = f"set {other!r} in the base config to a value that uses it, or drop {key!r} from the grid"
        raise GridError(
            f"grid point {point.name!r} of {grid.source} varies {key!r}, which has no effect when "
            f"{other!r} is {value!r}; {fix}"
        )
