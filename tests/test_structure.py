"""The shape of the source (checked on the source text with ``ast``): no import cycles; the
layers import only downward (utils < models, datasets < core < runners (the training, pruning and
sampling stages) < evaluation < pipeline (the stages in order) < entry points), so the stages
never import the evaluation package; short functions
in the packages that orchestrate; one module for the experiment layout; settings read as typed
attributes, never re-looked-up in a config dict, and models/ taking plain keyword arguments."""
import ast
import os

from conftest import ROOT

PACKAGES = ("models", "datasets", "core", "runners", "evaluation", "pipeline", "utils")
LAYOUT_NAMES = {"logs", "pruned", "tickets", "samples", "report", "curves", "metric",
                "tensorboard", "pipeline"}
# what each package may import of ours (entry points: main, earlybird_scripts/, bench/: anything)
ALLOWED = {"utils": {"utils"}, "models": {"models", "utils"},
           "datasets": {"datasets", "utils"},
           "core": {"core", "models", "datasets", "utils"},
           "runners": {"runners", "core", "models", "datasets", "utils"},
           "evaluation": {"evaluation", "runners", "core", "models", "datasets", "utils"},
           "pipeline": {"pipeline", "evaluation", "runners", "core", "models", "datasets",
                        "utils"}}


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


def _upward_imports(graph):
    """{module: [the project modules it imports from a higher layer]}."""
    wrong = {}
    for m, deps in graph.items():
        base = m.split(".")[0]
        if base in ALLOWED:
            bad = sorted(d for d in deps if d.split(".")[0] not in ALLOWED[base])
            if bad:
                wrong[m] = bad
    return wrong


def test_packages_import_only_downward():
    # e.g. a stage (runners/) importing the evaluation package, or anything the pipeline
    assert not _upward_imports(_graph())


def test_the_rule_catches_a_stage_importing_evaluation_or_the_pipeline():
    graph = _graph()
    graph["runners.sample"] = graph["runners.sample"] | {"evaluation.plots"}
    graph["evaluation.report"] = graph["evaluation.report"] | {"pipeline.stages"}
    assert _upward_imports(graph) == {"runners.sample": ["evaluation.plots"],
                                      "evaluation.report": ["pipeline.stages"]}


def test_functions_of_the_orchestrating_packages_are_short():
    long = []
    for pkg in ("core", "runners", "evaluation", "pipeline"):
        for f in sorted(os.listdir(os.path.join(ROOT, pkg))):
            if f.endswith(".py"):
                tree = ast.parse(open(os.path.join(ROOT, pkg, f)).read())
                for node in ast.walk(tree):
                    if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                        n = node.end_lineno - node.lineno + 1
                        if n > 80:
                            long.append(f"{pkg}/{f}:{node.name} ({n} lines)")
    assert not long


def _config_lookups(tree):
    """cfg["section"] / config["section"] subscripts: settings read past the typed record."""
    return [node.lineno for node in ast.walk(tree)
            if isinstance(node, ast.Subscript) and isinstance(node.value, ast.Name) and
            node.value.id in ("cfg", "config") and isinstance(node.slice, ast.Constant) and
            isinstance(node.slice.value, str)]


def test_settings_are_read_as_typed_attributes():
    assert _config_lookups(ast.parse('cfg["training"]["n_epochs"]'))
    found = {m: hits for m, p in _modules().items() if m != "core.config"
             for hits in [_config_lookups(ast.parse(open(p).read()))] if hits}
    assert not found


def test_models_take_keyword_arguments_not_a_config():
    takes_config = []
    for m, path in _modules().items():
        if m.startswith("models."):
            for node in ast.walk(ast.parse(open(path).read())):
                if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    names = [a.arg for a in node.args.args + node.args.kwonlyargs]
                    if any(n in ("cfg", "config") or n.endswith("_cfg") for n in names):
                        takes_config.append(f"{m}.{node.name}")
    assert not takes_config


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
        if m == "core.layout":
            assert _joins_layout_name(ast.parse(open(path).read()))
            continue
        hits = _joins_layout_name(ast.parse(open(path).read()))
        if hits:
            offenders[m] = hits
    assert not offenders
