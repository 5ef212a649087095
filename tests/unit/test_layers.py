"""The package's layers, read from its imports (no module is run): the foundation below the
model and the data, both below the engine; a module imports nothing above its own layer, and the
model (``import agen_hf.modeling_agen``) needs neither the data layer nor ``datasets``."""

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "agen_hf"

# the layers of the README's code map, bottom up; a module may import its own layer and below
FOUNDATION = {
    "atomic",
    "progress",
    "normalization",
    "upsampling",
    "modeling_outputs",
    "parameter_groups",
    "model_files",
    "labels",
    "arguments",
    "configuration_utils",
}
ALLOWED = {
    "foundation": {"foundation"},
    "model": {"foundation", "model"},
    "data": {"foundation", "data"},
    "engine": {"foundation", "model", "data", "engine"},
}


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def layer(name: str) -> str:
    parts = name.split(".")[1:]
    if not parts or parts[0] in FOUNDATION:
        return "foundation" if parts else "model"  # agen_hf/__init__: the public model API
    if parts[0] in ("data", "engine"):
        return parts[0]
    return "model"  # the model, its processor, inference, Hub I/O, metrics, figures


def imports(path: Path) -> tuple[set[str], set[str]]:
    """The agen_hf modules and the third-party top-level packages ``path`` imports."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    ours, theirs = set(), set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            for alias in node.names:
                (ours if alias.name.startswith("agen_hf") else theirs).add(alias.name)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module
            if target.startswith("agen_hf"):
                ours.add(target)
                ours.update(
                    f"{target}.{a.name}"
                    for a in node.names
                    if (PACKAGE.parent / f"{target}.{a.name}".replace(".", "/"))
                    .with_suffix(".py")
                    .is_file()
                )
            else:
                theirs.add(target.split(".")[0])
    return ours, {t.split(".")[0] for t in theirs}


GRAPH = {module_name(p): imports(p) for p in sorted(PACKAGE.rglob("*.py"))}


def known(name: str) -> str:
    """``name`` as a module of the graph (a package's ``__init__`` by its package name)."""
    while name not in GRAPH and "." in name:
        name = name.rsplit(".", 1)[0]
    return name


def test_no_module_imports_one_above_its_layer():
    wrong = [
        f"{name} ({layer(name)}) imports {known(target)} ({layer(known(target))})"
        for name, (ours, _) in GRAPH.items()
        for target in ours
        if layer(known(target)) not in ALLOWED[layer(name)]
    ]
    assert not wrong, "\n".join(wrong)


@pytest.mark.parametrize("module", ["agen_hf.modeling_agen", "agen_hf.deeplab", "agen_hf.hub"])
def test_the_model_needs_no_data_layer(module):
    seen, todo, packages = set(), [module], set()
    while todo:
        name = known(todo.pop())
        if name in seen:
            continue
        seen.add(name)
        ours, theirs = GRAPH[name]
        packages |= theirs
        todo += list(ours)
    assert not any(n.startswith(("agen_hf.data", "agen_hf.engine")) for n in seen), sorted(seen)
    assert "datasets" not in packages and "accelerate" not in packages


def test_the_layers_are_read():
    """The graph holds every module, and the rules have something to hold."""
    assert {"agen_hf.modeling_agen", "agen_hf.data.sources", "agen_hf.engine.loop"} <= set(GRAPH)
    assert any(t.startswith("agen_hf.data") for t in GRAPH["agen_hf.engine.loaders"][0])
    assert "datasets" in GRAPH["agen_hf.data.schema"][1]
    assert layer("agen_hf.engine.loop") == "engine" and layer("agen_hf.labels") == "foundation"
