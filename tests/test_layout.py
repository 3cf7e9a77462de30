"""The package's shape, read from its syntax trees: each layer imports only from the layers
below it, the math layer loads no file, console or plotting library, no function is long,
and the cells are named in their registries alone."""

import ast
import subprocess
import sys
from pathlib import Path

import pytest

from reference_numpy import spec

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "lstm_fn"
# Each part of lstm_fn and its layer: a module imports from lower layers and from its own
# part only (nn and text, both layer 1, do not import each other).
LAYERS = {"errors": 0, "nn": 1, "text": 1, "config": 2, "weights": 2, "sampling": 2,
          "inspect": 2, "training": 3, "runs": 4, "cli": 5, "__main__": 6}
MAX_FUNCTION_LINES = 60


def sources(*folders: Path):
    for folder in folders:
        yield from sorted(folder.rglob("*.py"))


def part_of(module: str) -> str | None:
    """``lstm_fn.nn.model`` -> ``nn``; None for ``lstm_fn`` itself or another package."""
    names = module.split(".")
    return names[1] if names[0] == "lstm_fn" and len(names) > 1 else None


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(path: Path) -> list[tuple[int, str]]:
    """Every module an absolute ``import`` in the file names (function-local ones too), with
    its line (``from a.b import c`` names ``a.b`` and ``a.b.c``); a relative import stays
    in its own package."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and not node.level:
            found.append((node.lineno, node.module))
            found += [(node.lineno, f"{node.module}.{alias.name}") for alias in node.names]
    return found


def test_each_layer_imports_only_from_the_layers_below_it():
    wrong = []
    for path in sources(PACKAGE):
        own = part_of(module_name(path))
        if own is None:
            continue
        for line, module in imported_modules(path):
            other = part_of(module)
            if other is None or other == own or other not in LAYERS:
                continue
            if LAYERS[other] >= LAYERS[own]:
                wrong.append(f"{path.relative_to(ROOT)}:{line}: {own} imports {module}")
    assert not wrong, "\n".join(wrong)


def test_every_part_of_the_package_has_a_layer():
    parts = {path.stem if path.parent == PACKAGE else path.relative_to(PACKAGE).parts[0]
             for path in sources(PACKAGE)} - {"__init__"}
    assert parts <= set(LAYERS), parts - set(LAYERS)


def test_the_reference_imports_nothing_of_lstm_fn():
    wrong = [f"{path.name}:{line}: {module}" for path in sources(ROOT / "reference_numpy")
             for line, module in imported_modules(path) if module.startswith("lstm_fn")]
    assert not wrong


def test_the_math_loads_no_files_console_or_plotting_library():
    """In a fresh interpreter: every module of lstm_fn.nn, and reference_numpy."""
    modules = [module_name(path) for path in sources(PACKAGE / "nn")]
    code = ("import sys\n" + "".join(f"import {m}\n" for m in modules) + "import reference_numpy\n"
            "print(sorted({m.split('.')[0] for m in sys.modules} & "
            "{'click', 'orbax', 'matplotlib', 'tensorstore'}))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=ROOT, check=True).stdout
    assert out.strip() == "[]"


def function_lines(node: ast.AST, lines: list[str]) -> int:
    """Lines of code of a function: its body without the docstring, blank lines and
    comment-only lines (nested functions count towards the one that holds them)."""
    body = node.body
    if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant) \
            and isinstance(body[0].value.value, str):
        body = body[1:]
    if not body:
        return 0
    span = lines[body[0].lineno - 1:node.end_lineno]
    return sum(1 for line in span if line.strip() and not line.strip().startswith("#"))


def test_no_function_is_longer_than_sixty_lines_of_code():
    long = []
    for path in sources(PACKAGE):
        text = path.read_text(encoding="utf-8")
        lines = text.splitlines()
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                count = function_lines(node, lines)
                if count > MAX_FUNCTION_LINES:
                    long.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.name}: {count}")
    assert not long, "\n".join(long)


def test_the_line_counter_counts_code_only():
    text = 'def f(x):\n    """Doc.\n\n    More."""\n    # why\n\n    y = x\n    return y\n'
    [node] = ast.parse(text).body
    assert function_lines(node, text.splitlines()) == 2


# The registries: the only places that may name every cell (by their keys).
REGISTRIES = {"reference_numpy/spec.py", "reference_numpy/cells.py", "lstm_fn/nn/cells.py",
              "reference_numpy/interop.py"}


def cell_name_lists(path: Path) -> list[int]:
    """Lines of list, tuple or set literals (and, outside the registries, dict literals)
    that spell out two or more cell names."""
    def names(nodes) -> int:
        return sum(isinstance(n, ast.Constant) and n.value in spec.CELLS for n in nodes)

    registry = str(path.relative_to(ROOT)) in REGISTRIES
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, (ast.List, ast.Tuple, ast.Set)) and names(node.elts) >= 2:
            found.append(node.lineno)
        elif isinstance(node, ast.Dict) and not registry and names(node.keys) >= 2:
            found.append(node.lineno)
    return found


@pytest.mark.parametrize("folder", ["lstm_fn", "reference_numpy"])
def test_cells_are_listed_in_their_registries_only(folder):
    found = {str(path.relative_to(ROOT)): lines for path in sources(ROOT / folder)
             if (lines := cell_name_lists(path))}
    assert not found, found
