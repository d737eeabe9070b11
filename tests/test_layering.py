"""The package's layering: no import from a lower layer into a higher one, no import cycle.

Every ``import ibc_geo.X`` / ``from ibc_geo.X import ...`` of every module counts, function-level
imports included (they are the easiest to add against the layering without noticing).
"""
import ast
import os

import ibc_geo

PACKAGE = os.path.dirname(ibc_geo.__file__)

# Bottom to top; a package may import its own layer and the ones below.
LAYERS = [
    {"utils"},
    {"nn"},
    {"graph"},
    {"data", "evaluation"},
    {"config"},
    {"modeling"},
    {"engine"},
    {"ablation", "retrieval"},
    {"testing"},
    {"cli"},
]
LAYER = {pkg: i for i, layer in enumerate(LAYERS) for pkg in layer}
# Entry points that nothing imports: `python -m ibc_geo.config` calls up into the CLI layer.
ENTRY_POINTS = {"ibc_geo.config.__main__"}


def modules():
    for root, _, files in os.walk(PACKAGE):
        for name in files:
            if name.endswith(".py"):
                path = os.path.join(root, name)
                rel = os.path.relpath(path, os.path.dirname(PACKAGE))[:-3].replace(os.sep, ".")
                yield rel.removesuffix(".__init__"), path


def imports(path, module):
    tree = ast.parse(open(path, encoding="utf-8").read())
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("ibc_geo")}
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("ibc_geo"):
            found.add(node.module)
            found |= {f"{node.module}.{a.name}" for a in node.names}
    return found


def test_every_package_has_a_layer():
    pkgs = {m.split(".")[1] for m, _ in modules() if m.count(".") >= 1}
    assert pkgs <= set(LAYER) | {"__init__"}, pkgs - set(LAYER)


def test_no_import_from_a_lower_layer_to_a_higher_one():
    wrong = []
    for module, path in modules():
        if module in ENTRY_POINTS or module.count(".") < 1:
            continue
        here = module.split(".")[1]
        for target in imports(path, module):
            parts = target.split(".")
            if len(parts) < 2 or parts[1] not in LAYER:
                continue
            if LAYER[parts[1]] > LAYER[here]:
                wrong.append(f"{module} imports {target}")
    assert not wrong, "\n".join(sorted(wrong))


def test_no_two_modules_import_each_other():
    names = {m for m, _ in modules()}
    graph = {}
    for module, path in modules():
        targets = set()
        for t in imports(path, module):
            while t and t not in names:
                t = t.rpartition(".")[0]
            if t and t != module and not module.startswith(t + ".") and not t.startswith(module + "."):
                targets.add(t)
        graph[module] = targets
    # Packages' __init__ re-export their modules; a module importing its own package's __init__
    # is a cycle only through them, so compare modules, leaving __init__ re-exports aside.
    inits = {m for m, p in modules() if p.endswith("__init__.py")}
    cycles = []
    for a, targets in graph.items():
        for b in targets:
            if a in graph.get(b, ()) and a not in inits and b not in inits:
                cycles.append(tuple(sorted((a, b))))
    assert not cycles, sorted(set(cycles))
