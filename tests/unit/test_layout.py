"""The shape of the house: which layer may import which (read from the source with ``ast``, nothing imported),
and no function over ~80 lines without a comment saying why.

Every ``import`` counts, also the ones inside functions (a lazy import is still a dependency); the ones under
``if TYPE_CHECKING:`` do not. Importing ``a.b.c`` runs ``a/__init__`` and ``a/b/__init__`` too, so the reach
check follows those edges.
"""

from __future__ import annotations

import ast
from functools import cache
from pathlib import Path

SRC = Path(__file__).resolve().parents[2] / "src"
PKG = SRC / "vaekit"

# Modules of vaekit.eval that the engine may use at validation time: leaves that import no loading, api or pipeline.
EVAL_LEAVES = {"vaekit.eval.metrics", "vaekit.eval.registry", "vaekit.eval.data", "vaekit.eval.run",
               "vaekit.eval.disentangle"}
CONFIG_MAY_IMPORT = ("vaekit.config", "vaekit.errors", "vaekit.objectives.terms")
MAX_LINES = 80
LONG_ALLOWED: set[tuple[str, str]] = set()
"""(module, function) pairs allowed past the limit without a comment: none today."""


def _name(path: Path) -> str:
    parts = path.relative_to(SRC).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


@cache
def _modules() -> dict[str, Path]:
    return {_name(p): p for p in sorted(PKG.rglob("*.py"))}


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _import_nodes(tree: ast.AST) -> list[ast.Import | ast.ImportFrom]:
    found: list[ast.Import | ast.ImportFrom] = []

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import | ast.ImportFrom):
            found.append(node)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return found


@cache
def imports(module: str) -> frozenset[str]:
    """The vaekit modules ``module`` imports directly (``from pkg import sub`` resolves to the submodule)."""
    known, path = _modules(), _modules()[module]
    out: set[str] = set()
    for node in _import_nodes(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        else:
            base = node.module or ""
            if node.level:  # relative: resolve against this module's package
                pkg = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
                base = ".".join(pkg[: len(pkg) - node.level + 1] + ([base] if base else []))
            names = [f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names]
        out.update(name for name in names if name.split(".")[0] == "vaekit")
    return frozenset(name for name in out if name in known)


def _parents(module: str) -> list[str]:
    parts = module.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts))]


def reach(module: str) -> set[str]:
    """Every vaekit module that importing ``module`` and calling its functions can load."""
    seen: set[str] = set()
    todo = [module]
    while todo:
        current = todo.pop()
        for nxt in [*imports(current), *_parents(current)]:
            if nxt not in seen:
                seen.add(nxt)
                todo.append(nxt)
    return seen


def _under(module: str, *prefixes: str) -> bool:
    return any(module == p or module.startswith(p + ".") for p in prefixes)


def _engine_modules() -> list[str]:
    return [m for m in _modules() if _under(m, "vaekit.engine")]


def test_the_import_parser_sees_direct_lazy_and_package_imports() -> None:
    assert "vaekit.engine.plan" in imports("vaekit.engine.loop")
    assert "vaekit.eval.run" in imports("vaekit.engine.validation")  # imported inside a method
    assert "vaekit.eval.metrics" in imports("vaekit.eval.run")  # from vaekit.eval import metrics as M
    assert "vaekit.eval.run" not in imports("vaekit.eval.figures")  # under TYPE_CHECKING only
    assert "vaekit.api" in reach("vaekit.cli")


def test_engine_imports_no_evaluation_entry_api_or_pipeline() -> None:
    bad = {
        (m, dep)
        for m in _engine_modules()
        for dep in imports(m)
        if _under(dep, "vaekit.api", "vaekit.pipeline") or (_under(dep, "vaekit.eval") and dep not in EVAL_LEAVES)
    }
    assert not bad, f"engine modules import above the engine: {sorted(bad)}"


def test_the_eval_leaves_import_no_loading_api_or_pipeline() -> None:
    bad = {
        (m, dep)
        for m in EVAL_LEAVES
        for dep in imports(m)
        if _under(dep, "vaekit.api", "vaekit.pipeline") or (_under(dep, "vaekit.eval") and dep not in EVAL_LEAVES)
    }
    assert not bad, f"eval leaves import above themselves: {sorted(bad)}"


def test_engine_cannot_reach_the_api_or_the_pipeline() -> None:
    bad = {(m, dep) for m in _engine_modules() for dep in reach(m) if _under(dep, "vaekit.api", "vaekit.pipeline")}
    assert not bad, f"an import chain leads from the engine up to: {sorted(bad)}"


def test_config_imports_only_config_errors_and_the_term_list() -> None:
    bad = {
        (m, dep)
        for m in _modules()
        if _under(m, "vaekit.config")
        for dep in imports(m)
        if not _under(dep, *CONFIG_MAY_IMPORT)
    }
    assert not bad, f"config imports outside config, errors and objectives.terms: {sorted(bad)}"


def _says_why(lines: list[str], node: ast.FunctionDef | ast.AsyncFunctionDef) -> bool:
    """A ``# ... long because ...`` comment block right above the function (and its decorators), or the phrase
    in its docstring."""
    first = min([node.lineno, *(d.lineno for d in node.decorator_list)])
    i = first - 2
    while i >= 0 and lines[i].strip().startswith("#"):
        if "long because" in lines[i]:
            return True
        i -= 1
    return "long because" in (ast.get_docstring(node) or "")


def test_no_function_is_over_80_lines_without_saying_why() -> None:
    long = []
    for module, path in _modules().items():
        text = path.read_text()
        lines = text.splitlines()
        for node in ast.walk(ast.parse(text)):
            if not isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                continue
            size = node.end_lineno - node.lineno + 1
            if size > MAX_LINES and (module, node.name) not in LONG_ALLOWED and not _says_why(lines, node):
                long.append(f"{module}.{node.name} ({size} lines, line {node.lineno})")
    assert not long, "split these, or say why above the def with a '# long because ...' comment: " + ", ".join(long)
