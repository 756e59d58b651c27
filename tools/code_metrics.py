"""Shape figures for ``kerastl/``: lines, longest functions, import cycles.

Run from the repository root::

    python tools/code_metrics.py            # summary
    python tools/code_metrics.py --over 80  # exit 1 when a function is longer

Module-level imports only count towards cycles (an import inside a function is a
deliberate lazy edge and cannot form an import-time cycle); imports under
``if TYPE_CHECKING:`` are left out for the same reason.
"""

from __future__ import annotations

import argparse
import ast
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PKG = ROOT / "kerastl"


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _functions(tree: ast.AST, path: Path, docstrings: bool = True):
    """(length, where) of every function; its docstring counts only if ``docstrings``."""
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            n = node.end_lineno - node.lineno + 1
            first = node.body[0]
            if not docstrings and isinstance(first, ast.Expr):
                if isinstance(first.value, ast.Constant) and isinstance(first.value.value, str):
                    n -= first.end_lineno - first.lineno + 1
            yield n, f"{path.relative_to(ROOT)}:{node.lineno} {node.name}"


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _top_imports(tree: ast.Module, module: str, is_pkg: bool, known: set[str], lazy=False):
    def resolve(node: ast.ImportFrom) -> list[str]:
        if node.level:
            base = module.split(".")
            if not is_pkg:
                base = base[:-1]
            base = base[: len(base) - (node.level - 1)]
            target = ".".join(base + ([node.module] if node.module else []))
        else:
            target = node.module or ""
        out = [target]
        out += [f"{target}.{a.name}" for a in node.names]
        return out

    def visit(body):
        for node in body:
            if isinstance(node, ast.If) and _is_type_checking(node):
                continue
            if isinstance(node, (ast.If, ast.Try)):
                visit(node.body)
                visit(getattr(node, "orelse", []))
                for h in getattr(node, "handlers", []):
                    visit(h.body)
                visit(getattr(node, "finalbody", []))
            elif isinstance(node, ast.Import):
                for a in node.names:
                    yield_names.append(a.name)
            elif isinstance(node, ast.ImportFrom):
                yield_names.extend(resolve(node))

    yield_names: list[str] = []
    if lazy:
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                yield_names.extend(a.name for a in node.names)
            elif isinstance(node, ast.ImportFrom):
                yield_names.extend(resolve(node))
    else:
        visit(tree.body)
    edges = set()
    for name in yield_names:
        while name and name not in known:
            name = name.rpartition(".")[0]
        if name and name != module:
            edges.add(name)
    return edges


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    index, low, stack, on, out = {}, {}, [], set(), []
    counter = [0]

    def strong(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                strong(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    sys.setrecursionlimit(10000)
    for v in graph:
        if v not in index:
            strong(v)
    return out


def measure(lazy: bool = False, docstrings: bool = True) -> dict:
    files = sorted(PKG.rglob("*.py"))
    trees = {p: ast.parse(p.read_text(), str(p)) for p in files}
    known = {_module_name(p) for p in files}
    lines = sum(len(p.read_text().splitlines()) for p in files)
    funcs = sorted(
        (f for p, t in trees.items() for f in _functions(t, p, docstrings)), reverse=True
    )
    # A package's __init__ importing its own submodules is not a cycle worth
    # counting unless the submodule imports the package back: keep every edge.
    graph = {
        _module_name(p): _top_imports(t, _module_name(p), p.name == "__init__.py", known, lazy)
        for p, t in trees.items()
    }
    # importing "kerastl.x.y" runs "kerastl.x" and "kerastl" first: those are
    # not edges of the module itself, so leave parent packages out of cycles.
    for mod, edges in graph.items():
        graph[mod] = {e for e in edges if not mod.startswith(e + ".")}
    return {"files": len(files), "lines": lines, "functions": funcs, "cycles": _cycles(graph)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--over", type=int, default=None, help="fail when a function is longer")
    parser.add_argument("--top", type=int, default=10)
    parser.add_argument(
        "--lazy", action="store_true", help="count imports inside functions towards cycles too"
    )
    parser.add_argument(
        "--no-docstrings", action="store_true", help="leave docstrings out of function lengths"
    )
    args = parser.parse_args()
    m = measure(args.lazy, not args.no_docstrings)
    print(f"files: {m['files']}  lines: {m['lines']}")
    what = "without docstrings" if args.no_docstrings else "with docstrings"
    print(f"longest functions, {what} (of {len(m['functions'])}):")
    for n, where in m["functions"][: args.top]:
        print(f"  {n:5d}  {where}")
    kind = "all imports" if args.lazy else "module-level imports"
    print(f"import cycles ({kind}): {len(m['cycles'])}")
    for c in m["cycles"]:
        print("  " + " <-> ".join(c))
    if args.over is not None:
        long = [f for f in m["functions"] if f[0] > args.over]
        print(f"functions over {args.over} lines: {len(long)}")
        return 1 if long else 0
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
