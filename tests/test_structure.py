"""The shape of the source: no import cycles, no upward imports, short runner functions, and
one module for the experiment layout (checked on the source text with ``ast``)."""
import ast
import os

from conftest import ROOT

PACKAGES = ("models", "datasets", "runners", "utils")
LAYOUT_NAMES = {"logs", "pruned", "tickets", "samples"}


def _modules():
    """{module name: path} of the project's own modules."""
    out = {"main": os.path.join(ROOT, "main.py")}
    for pkg in PACKAGES:
        for f in sorted(os.listdir(os.path.join(ROOT, pkg))):
            if f.endswith(".py"):
                name = pkg if f == "__init__.py" else f"{pkg}.{f[:-3]}"
                out[name] = os.path.join(ROOT, pkg, f)
    for folder in ("earlybird_scripts", "bench"):
        for f in sorted(os.listdir(os.path.join(ROOT, folder))):
            if f.endswith(".py"):
                out[f"{folder}/{f[:-3]}"] = os.path.join(ROOT, folder, f)
    return out


def _imports(path, known):
    """Project modules imported anywhere in a file (module level or inside functions)."""
    tree = ast.parse(open(path).read())
    found = set()
    for node in ast.walk(tree):
        names = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        for n in names:
            if n in known:
                found.add(n)
    return found


def _graph():
    mods = _modules()
    return {m: _imports(p, mods) - {m} for m, p in mods.items()}


def _cycle(graph):
    """One import cycle as a list of modules, or None."""
    state, stack = {}, []

    def visit(m):
        state[m] = "open"
        stack.append(m)
        for n in sorted(graph.get(m, ())):
            if state.get(n) == "open":
                return stack[stack.index(n):] + [n]
            if n not in state:
                found = visit(n)
                if found:
                    return found
        stack.pop()
        state[m] = "done"
        return None

    for m in sorted(graph):
        if m not in state:
            found = visit(m)
            if found:
                return found
    return None


def test_cycle_finder_finds_a_planted_cycle():
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) is None


def test_no_import_cycle():
    assert _cycle(_graph()) is None


def test_models_datasets_utils_do_not_import_upward():
    for m, deps in _graph().items():
        base = m.split(".")[0]
        if base in ("models", "datasets"):
            assert not [d for d in deps if d.startswith("runners")], (m, deps)
        if base == "utils":
            assert all(d.startswith("utils") for d in deps), (m, deps)
        if base == "models":
            assert not [d for d in deps if d.startswith("datasets")], (m, deps)


def test_runner_functions_are_short():
    long = []
    for f in sorted(os.listdir(os.path.join(ROOT, "runners"))):
        if f.endswith(".py"):
            tree = ast.parse(open(os.path.join(ROOT, "runners", f)).read())
            for node in ast.walk(tree):
                if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    n = node.end_lineno - node.lineno + 1
                    if n > 80:
                        long.append(f"{f}:{node.name} ({n} lines)")
    assert not long


def _joins_layout_name(tree):
    """os.path.join(...) calls with one of the layout's folder names as a literal part."""
    hits = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and \
                node.func.attr == "join":
            for arg in node.args:
                if isinstance(arg, ast.Constant) and arg.value in LAYOUT_NAMES:
                    hits.append((node.lineno, arg.value))
        if isinstance(node, ast.JoinedStr):
            for part in node.values:
                if isinstance(part, ast.Constant) and any(
                        f"{n}/" in part.value or f"/{n}" in part.value for n in LAYOUT_NAMES):
                    hits.append((node.lineno, part.value))
    return hits


def test_one_module_holds_the_experiment_layout():
    assert _joins_layout_name(ast.parse('import os\nos.path.join(exp, "logs", doc)'))
    offenders = {}
    for m, path in _modules().items():
        if m == "runners.layout":
            assert _joins_layout_name(ast.parse(open(path).read()))
            continue
        hits = _joins_layout_name(ast.parse(open(path).read()))
        if hits:
            offenders[m] = hits
    assert not offenders
