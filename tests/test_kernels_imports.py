"""The kernels layer sits at the bottom of the package: its modules import only NumPy, the
standard library, the extension minillm._C and each other (never the autograd layer above)."""
import ast
import pathlib
import sys

import pytest

import minillm.kernels

KERNELS_DIR = pathlib.Path(minillm.kernels.__file__).parent
MODULES = sorted(KERNELS_DIR.rglob("*.py"))


def module_name(path):
    """minillm.kernels.native.softmax for .../minillm/kernels/native/softmax.py."""
    parts = path.relative_to(KERNELS_DIR.parent.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(path):
    """The absolute names of everything the module at `path` imports, at any depth of its code."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = f"{anchor}.{base}" if base else anchor
            found += [f"{base}.{alias.name}" if not node.module else base for alias in node.names]
    return found


def allowed(module):
    top = module.partition(".")[0]
    return (top == "numpy" or top in sys.stdlib_module_names or module == "minillm._C"
            or module == "minillm.kernels" or module.startswith("minillm.kernels."))


def test_the_scan_finds_every_kernels_module():
    names = {module_name(p) for p in MODULES}
    assert {"minillm.kernels", "minillm.kernels.native", "minillm.kernels.native.softmax",
            "minillm.kernels.reference.norm"} <= names


@pytest.mark.parametrize("path", MODULES, ids=lambda p: module_name(p))
def test_kernels_modules_import_only_numpy_the_stdlib_C_and_each_other(path):
    imports = imported_modules(path)
    assert imports, f"{module_name(path)}: found no imports (the scan is broken)"
    outside = [m for m in imports if not allowed(m)]
    assert not outside, f"{module_name(path)} imports {outside}: the kernels layer may only import numpy, " \
                        "the standard library, minillm._C and minillm.kernels.*"
