"""Imports run one way: data -> evaluation -> modeling -> inference -> engine ->
distributed -> cli.

Every ``import`` and ``from ... import`` in ``src/cellstack``, module-level or inside a
function, is checked: a module may import its own layer, the layers before it and the
foundation modules (errors, fileio, config, structures, ddp), never a later layer.
"""

from __future__ import annotations

import ast
from pathlib import Path

import cellstack

PACKAGE = Path(cellstack.__file__).parent
LAYERS = ("data", "evaluation", "modeling", "inference", "engine", "distributed")
FOUNDATION = ("errors", "fileio", "config", "structures", "ddp")
#: The user-facing top: command line, demo, napari plugin and the package facade.
TOP = ("cli", "demo", "napari_plugin", "__main__", "__init__")


def rank(module: str) -> int:
    """0 for the foundation, 1..6 for the layers, 7 for the top."""
    parts = module.split(".")
    name = parts[1] if len(parts) > 1 else "__init__"
    if name in FOUNDATION:
        return 0
    if name in LAYERS:
        return LAYERS.index(name) + 1
    if name in TOP or name == "configs":
        return len(LAYERS) + 1
    raise AssertionError(f"{module}: not in any layer; add it to tests/test_layers.py")


def import_statements(path: Path) -> list[tuple[ast.stmt, str, bool]]:
    """``(statement, module, under TYPE_CHECKING)`` of every import in a file (module
    level or in functions), relative ones resolved; ``import a, b`` gives one row each."""
    tree = ast.parse(path.read_text(), str(path))
    typing_only = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            typing_only |= {id(n) for child in node.body for n in ast.walk(child)}
    package = list(path.relative_to(PACKAGE.parent).with_suffix("").parts[:-1])
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node, a.name, id(node) in typing_only) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - node.level + 1]
                module = ".".join([*base, *([node.module] if node.module else [])])
            else:
                module = node.module or ""
            found.append((node, module, id(node) in typing_only))
    return found


def imports(path: Path) -> list[tuple[int, str]]:
    """``(line, module)`` of every cellstack import in a file, relative ones resolved."""
    return [
        (node.lineno, m)
        for node, m, _ in import_statements(path)
        if m == "cellstack" or m.startswith("cellstack.")
    ]


def module_name(path: Path) -> str:
    rel = path.relative_to(PACKAGE.parent).with_suffix("")
    return ".".join(rel.parts)


def test_every_import_runs_one_way():
    against = []
    for path in sorted(PACKAGE.rglob("*.py")):
        me = module_name(path)
        for line, target in imports(path):
            if target == "cellstack":
                continue  # the facade's names are foundation ones
            mine, theirs = rank(me), rank(target)
            if theirs > mine or (mine == 0 and theirs != 0):
                against.append(f"{path.relative_to(PACKAGE)}:{line} imports {target}")
    assert not against, (
        "imports against data -> evaluation -> modeling -> inference -> "
        "engine -> distributed -> cli:\n" + "\n".join(against)
    )


def test_the_checker_sees_imports_inside_functions():
    # The wrong imports this test exists for were all inside functions.
    found = imports(PACKAGE / "inference" / "predict.py")
    assert "cellstack.inference.segmenter" in {m for _, m in found}  # in predict_folder
    assert rank("cellstack.engine.trainer") > rank("cellstack.inference.predict")
    assert rank("cellstack.ddp") == 0
    assert rank("cellstack.distributed.blocks") > rank("cellstack.inference.segmenter")


def _module_imports(path: Path) -> set[str]:
    """The cellstack modules a file imports (module level, in functions, and under
    ``if TYPE_CHECKING:``: a type-only import is a dependency too, and a cycle through
    it is one module knowing another's internals both ways), ``from package import
    module`` resolved to the module."""
    found = set()
    for node, module, _ in import_statements(path):
        if isinstance(node, ast.Import):
            found.add(module)
            continue
        for alias in node.names:
            sub = f"{module}.{alias.name}"
            is_module = (PACKAGE.parent / Path(*sub.split("."))).with_suffix(".py").is_file()
            found.add(sub if is_module else module)
    return {m for m in found if m.startswith("cellstack.")}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One cycle per strongly connected component of more than one module (Tarjan)."""
    index, low, stack, on_stack, out = {}, {}, [], set(), []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_no_import_cycle_inside_a_layer():
    graph = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        me = module_name(path).removesuffix(".__init__")
        layer = me.split(".")[1] if me.count(".") else ""
        graph[me] = {
            m
            for m in _module_imports(path)
            if m != me and m.split(".")[1] == layer and m.count(".") >= 2
        }
    cycles = _cycles(graph)
    assert not cycles, "import cycles inside a layer:\n" + "\n".join(map(" <-> ".join, cycles))


def test_the_cycle_check_sees_type_only_imports():
    # The hooks <-> trainer cycle of issue 45 went through an ``if TYPE_CHECKING:`` import.
    hooks = PACKAGE / "engine" / "hooks.py"
    typing_only = {m for _, m, typing in import_statements(hooks) if typing}
    assert "cellstack.data.records" in typing_only
    assert "cellstack.data.records" in _module_imports(hooks)


def test_the_cycle_finder_finds_a_cycle():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert _cycles(graph) == [["a", "b", "c"]]


def test_the_architecture_map_names_every_module():
    text = (PACKAGE.parents[1] / "docs" / "architecture.md").read_text()
    modules = [
        p.name for p in PACKAGE.rglob("*.py") if p.name not in ("__init__.py", "__main__.py")
    ]
    missing = sorted(m for m in modules if f"{m}`" not in text)  # `x.py` or `heads/x.py`
    assert not missing, f"docs/architecture.md does not name {missing}"
