"""The import graph of minillm/: no circles, and no import from a lower layer to a higher one.

Every module's imports are read with ast (all of them: at the top, inside functions, under
TYPE_CHECKING), resolved to the minillm modules they name, and checked against LAYERS, the order
docs/architecture.md describes. A new module must be placed in a layer here.
"""
import ast
import functools
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGE = os.path.join(ROOT, "minillm")

# Bottom up. A module may import its own layer and the layers below it, never one above. A name
# stands for that module and everything under it; "minillm" alone is only the package's __init__: the
# front door, at the top, handing out names of every layer (at import time it loads only the kernels,
# which test_kernels_and_tokenizers_import_without_the_autograd_layer checks in a fresh interpreter).
LAYERS = [
    ("base", ["minillm.files", "minillm.config"]),
    ("kernels", ["minillm._C", "minillm.kernels"]),
    ("tensor", ["minillm.autograd.engine"]),
    ("ops", ["minillm.autograd", "minillm.tensor"]),
    ("functional", ["minillm.functional"]),
    ("nn", ["minillm.nn"]),
    ("models", ["minillm.models"]),
    ("tokenizers", ["minillm.tokenizers"]),
    ("io", ["minillm.io"]),
    ("workflows", ["minillm.optim", "minillm.data", "minillm.lora", "minillm.finetune", "minillm.sft_data", "minillm.sft_eval", "minillm.checkpoint", "minillm.checkpoint_files",
                   "minillm.generate", "minillm.train", "minillm.train_config",
                   "minillm.plots", "minillm.quantize", "minillm.quant", "minillm.scaling", "minillm.distributed",
                   "minillm.pretrained", "minillm.chat", "minillm.streaming",
                   "minillm.context_extension", "minillm.long_eval", "minillm.families", "minillm.mlm", "minillm.seq2seq",
                   "minillm.seq2seq_data", "minillm.embed", "minillm.alignment"]),
    ("serve", ["minillm.serve"]),
    ("top", ["minillm", "minillm.cli", "minillm.cli_train", "minillm.cli_finetune", "minillm.cli_constitution", "minillm.pretrained_cli", "minillm.encoder_cli", "minillm.scaling.cli",
             "minillm.tokenizers.cli", "minillm.alignment.cli_rl", "minillm.serve_cli", "minillm.cli_long_context", "minillm.__main__", "minillm.demo", "minillm.testing"]),
]
LAYER_NAMES = [name for name, _ in LAYERS]


def layer_of(module):
    """(index, name) of the layer module belongs to: the longest prefix in LAYERS that names it."""
    best = None
    for index, (name, prefixes) in enumerate(LAYERS):
        for prefix in prefixes:
            matches = module == prefix or (prefix != "minillm" and module.startswith(prefix + "."))
            if matches and (best is None or len(prefix) > best[2]):
                best = (index, name, len(prefix))
    return None if best is None else best[:2]


def package_modules(package_dir=PACKAGE):
    """{module name: path} of every .py file under minillm/ (a package is its __init__.py)."""
    modules = {}
    for directory, subdirs, files in os.walk(package_dir):
        subdirs[:] = [d for d in subdirs if d != "__pycache__"]
        for f in files:
            if f.endswith(".py"):
                rel = os.path.relpath(os.path.join(directory, f), os.path.dirname(package_dir))[:-3].split(os.sep)
                name = ".".join(rel[:-1] if rel[-1] == "__init__" else rel)
                modules[name] = os.path.join(directory, f)
    return modules


def imports_of(name, path, known):
    """The minillm modules that the file of module `name` imports, each once."""
    tree = ast.parse(open(path, encoding="utf-8").read(), path)
    is_package = os.path.basename(path) == "__init__.py"
    package = name if is_package else name.rpartition(".")[0]
    targets = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            targets.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[:len(base) - (node.level - 1)]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module
            for alias in node.names:      # `from pkg import mod` imports the module pkg.mod
                submodule = f"{module}.{alias.name}"
                targets.add(submodule if submodule in known else module)
    return {t for t in targets if t == "minillm" or t.startswith("minillm.")}


@functools.lru_cache(maxsize=None)
def import_graph(package_dir=PACKAGE):
    modules = package_modules(package_dir)
    known = set(modules) | {"minillm._C"}
    return {name: imports_of(name, path, known) for name, path in modules.items()}


def is_ancestor(package, module):
    return module.startswith(package + ".")


def find_cycle(graph):
    """One import circle as a list of modules [a, b, ..., a], or None. Importing one of your own
    ancestor packages is not an edge here: Python runs a package's __init__ before any module in it."""
    state, stack = {}, []                                     # state: 1 on the stack, 2 done

    def visit(node):
        state[node] = 1
        stack.append(node)
        for target in sorted(graph.get(node, ())):
            if is_ancestor(target, node):
                continue
            if state.get(target) == 1:
                return stack[stack.index(target):] + [target]
            if target not in state:
                cycle = visit(target)
                if cycle:
                    return cycle
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state:
            cycle = visit(node)
            if cycle:
                return cycle
    return None


def upward_imports(graph):
    """(importer, its layer, imported, its layer) for every import of a higher layer."""
    bad = []
    for module, targets in sorted(graph.items()):
        here = layer_of(module)
        for target in sorted(targets):
            there = layer_of(target)
            if here is not None and there is not None and there[0] > here[0]:
                bad.append((module, here[1], target, there[1]))
    return bad


def test_the_layers_match_docs_architecture():
    text = open(os.path.join(ROOT, "docs", "architecture.md"), encoding="utf-8").read()
    line = next((ln for ln in text.splitlines() if ln.startswith("Layers, bottom up:")), None)
    assert line is not None, "docs/architecture.md must state the layer order on a line 'Layers, bottom up: ...'"
    assert [w.strip(" .`") for w in line.split(":", 1)[1].split("<")] == LAYER_NAMES


def test_every_module_has_a_layer():
    unplaced = sorted(m for m in package_modules() if layer_of(m) is None)
    assert not unplaced, f"put these modules in a layer of LAYERS (and docs/architecture.md): {unplaced}"


def test_the_import_graph_has_no_circle():
    cycle = find_cycle(import_graph())
    assert cycle is None, "import circle: " + " -> ".join(cycle)


def test_nothing_imports_a_higher_layer():
    bad = upward_imports(import_graph())
    assert not bad, "imports from a lower layer to a higher one:\n" + "\n".join(
        f"  {m} ({ml}) imports {t} ({tl})" for m, ml, t, tl in bad)


def test_the_checks_catch_a_circle_and_an_upward_import(tmp_path):
    """The checks themselves fail on a package made to break both rules."""
    pkg = tmp_path / "minillm"
    (pkg / "autograd").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "autograd" / "__init__.py").write_text("")
    (pkg / "autograd" / "engine.py").write_text("from . import ops\n")           # tensor -> ops: upward
    (pkg / "autograd" / "ops.py").write_text("from .engine import Tensor\n")     # ops -> tensor: the circle
    (pkg / "files.py").write_text("def f():\n    from .nn import Module\n")      # base -> nn, deferred
    graph = {name: imports_of(name, path, set(package_modules(str(pkg))))
             for name, path in package_modules(str(pkg)).items()}
    assert find_cycle(graph) in (["minillm.autograd.engine", "minillm.autograd.ops", "minillm.autograd.engine"],
                                 ["minillm.autograd.ops", "minillm.autograd.engine", "minillm.autograd.ops"])
    assert [(m, t) for m, _, t, _ in upward_imports(graph)] == [
        ("minillm.autograd.engine", "minillm.autograd.ops"), ("minillm.files", "minillm.nn")]


def _modules_loaded_by(statement):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([ROOT, os.environ.get("PYTHONPATH", "")]))
    code = f"{statement}; import sys; print(' '.join(sorted(m for m in sys.modules if m.startswith('minillm'))))"
    out = subprocess.run([sys.executable, "-W", "ignore", "-c", code], cwd=ROOT, env=env, capture_output=True,
                         text=True, check=True)
    return out.stdout.split()


@pytest.mark.parametrize("statement,highest", [("import minillm.kernels", "kernels"),
                                               ("import minillm.tokenizers", "tokenizers")])
def test_importing_a_low_layer_loads_nothing_above_it(statement, highest):
    """import minillm.kernels runs minillm/__init__.py, which must not load the autograd engine
    (or anything else above the kernels); likewise for the tokenizers, which sit on the kernels."""
    allowed = {"base", "kernels", highest}
    loaded = _modules_loaded_by(statement)
    assert "minillm.kernels" in loaded
    above = [m for m in loaded if m != "minillm" and (layer_of(m) or (None, None))[1] not in allowed]
    assert not above, f"`{statement}` loaded {above}"


def test_the_autograd_names_load_on_first_use():
    loaded = _modules_loaded_by("import minillm as mm; mm.tensor([1.0]) + 1; mm.no_grad; mm.Function")
    assert "minillm.autograd.engine" in loaded and "minillm.functional" not in loaded
