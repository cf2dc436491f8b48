"""Figures of segfm's layout: file sizes, constructor sizes and the import arrows between parts.

Reads the source as text (nothing is imported), so it runs in a second on any checkout::

    python benchmarks/structure.py [--root segfm] [--limit 400]

Prints markdown tables: the largest files, the files over the line limit, each method's
constructor argument count and ``hparams["..."]`` reads, and the arrows between the parts of
the package (a part is a top-level module or subpackage of ``segfm``) with any cycle among them.
"""

from __future__ import annotations

import argparse
import ast
from collections import defaultdict
from pathlib import Path


def python_files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*.py") if "__pycache__" not in p.parts)


def part_of(module: str, package: str) -> str | None:
    """``segfm.data.npz`` -> ``data``, ``segfm.data.io.npz`` -> ``data.io``; others -> None.

    The readers and writers of ``data/io`` are a part of their own: they sit below evaluation
    and the methods, which may use them, while the data modules above them may not be.
    """
    names = module.split(".")
    if names[0] != package or len(names) < 2:
        return None
    if names[1:3] == ["data", "io"]:
        return "data.io"
    return names[1]


def module_name(path: Path, root: Path) -> str:
    rel = path.relative_to(root.parent).with_suffix("")
    names = list(rel.parts)
    if names[-1] == "__init__":
        names.pop()
    return ".".join(names)


def imports_of(path: Path, root: Path) -> set[str]:
    """Absolute names of every module the file imports (top level and inside functions)."""
    tree = ast.parse(path.read_text())
    here = module_name(path, root).split(".")
    if path.name != "__init__.py":
        here = here[:-1]
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = here[: len(here) - node.level + 1]
                name = ".".join([*base, node.module] if node.module else base)
            else:
                name = node.module or ""
            found.add(name)
            found.update(f"{name}.{alias.name}" for alias in node.names)
    return found


def constructor_sizes(path: Path) -> list[tuple[str, int, int]]:
    """``(class, __init__ arguments without self, hparams["..."] reads)`` of each class."""
    tree = ast.parse(path.read_text())
    rows = []
    for node in tree.body:
        if not isinstance(node, ast.ClassDef):
            continue
        init = next(
            (f for f in node.body if isinstance(f, ast.FunctionDef) and f.name == "__init__"),
            None,
        )
        if init is None:
            continue
        args = init.args
        count = len(args.posonlyargs) + len(args.args) + len(args.kwonlyargs) - 1
        reads = sum(
            1
            for n in ast.walk(node)
            if isinstance(n, ast.Subscript)
            and isinstance(n.value, ast.Attribute)
            and n.value.attr == "hparams"
        )
        reads += sum(
            1
            for n in ast.walk(node)
            if isinstance(n, ast.Call)
            and isinstance(n.func, ast.Attribute)
            and n.func.attr == "get"
            and isinstance(n.func.value, ast.Attribute)
            and n.func.value.attr == "hparams"
        )
        rows.append((node.name, count, reads))
    return rows


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one part (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in sorted(edges.get(v, ())):
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
                found.append(sorted(component))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=Path("segfm"))
    parser.add_argument("--limit", type=int, default=400)
    args = parser.parse_args()
    root: Path = args.root.resolve()
    package = root.name
    files = python_files(root)
    lines = {p: len(p.read_text().splitlines()) for p in files}

    print(f"## Files ({len(files)} modules, {sum(lines.values())} lines)\n")
    print("| file | lines |\n| --- | --- |")
    for p, n in sorted(lines.items(), key=lambda kv: -kv[1])[:8]:
        print(f"| {p.relative_to(root.parent)} | {n} |")
    over = [p for p, n in lines.items() if n > args.limit]
    print(f"\nFiles over {args.limit} lines: {len(over)}\n")

    print("## Method constructors\n")
    print("| class | file | lines | init arguments | hparams reads |")
    print("| --- | --- | --- | --- | --- |")
    for p in python_files(root / "methods"):
        for name, count, reads in constructor_sizes(p):
            print(f"| {name} | {p.name} | {lines[p]} | {count} | {reads} |")

    edges: dict[str, set[str]] = defaultdict(set)
    for p in files:
        source = part_of(module_name(p, root), package)
        if source is None:
            continue
        for name in imports_of(p, root):
            target = part_of(name, package)
            if target is not None and target != source:
                edges[source].add(target)
    print("\n## Import arrows between parts\n")
    print("| part | imports |\n| --- | --- |")
    for source in sorted(edges):
        print(f"| {source} | {', '.join(sorted(edges[source]))} |")
    found = cycles(edges)
    print(f"\nCycles: {'; '.join(' <-> '.join(c) for c in found) if found else 'none'}")


if __name__ == "__main__":
    main()
