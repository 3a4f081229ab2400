"""The counts issue #36 tracks, read from the source: callback mentions, dict look-ups across floors,
SQL outside the store, import cycles and upward imports. Prints them and writes
bench/results/architecture-counts.json, so a refactor's before and after are one command each.

    python bench/architecture_counts.py [--package DIR] [--out FILE]
"""

import argparse
import ast
import io
import json
import re
import tokenize
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "yollava_cli"
CALLBACKS = ("on_status", "on_progress", "on_event")
RECORDS = ("concept", "photo", "checkpoint", "run")
SQL = re.compile(r"^\s*(SELECT|INSERT|UPDATE|DELETE FROM|REPLACE INTO|CREATE|DROP|ALTER|PRAGMA|WITH)\s")
# The floors of docs/design.md, highest first: a module may import its own floor and those below.
# evaluation/ measures what use/ does, so it stands just above it. The top-level modules beside the
# floors (errors, config, schema) sit under store/; __main__ is the entry point above cli/.
FLOORS = {"__main__": 8, "cli": 7, "serve": 6, "scale": 5, "evaluation": 4, "use": 3, "learning": 2, "models": 1, "store": 0}
BESIDE = -1


def modules(package: Path) -> dict[str, Path]:
    """Dotted module name → file, for every module of the package."""
    found = {}
    for path in sorted(package.rglob("*.py")):
        parts = path.relative_to(package.parent).with_suffix("").parts
        found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def floor_of(module: str) -> tuple[str, int]:
    """(floor name, height) of a dotted module name inside the package."""
    parts = module.split(".")
    name = parts[1] if len(parts) > 1 else "__init__"
    return name, FLOORS.get(name, BESIDE)


def callback_mentions(source: str) -> dict[str, int]:
    counts = dict.fromkeys(CALLBACKS, 0)
    for token in tokenize.generate_tokens(io.StringIO(source).readline):
        if token.type == tokenize.NAME and token.string in counts:
            counts[token.string] += 1
    return counts


def record_lookups(tree: ast.AST) -> int:
    """`concept["..."]`, `photo[...]`, `checkpoint[...]`, `run[...]`: string-keyed records read across floors."""
    return sum(isinstance(node, ast.Subscript) and isinstance(node.value, ast.Name) and node.value.id in RECORDS
               for node in ast.walk(tree))


def sql_statements(tree: ast.AST) -> list[int]:
    """Lines of string literals (f-strings too) that are SQL statements."""
    lines = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and SQL.match(node.value):
            lines.append(node.lineno)
        elif isinstance(node, ast.JoinedStr) and node.values and isinstance(node.values[0], ast.Constant) \
                and isinstance(node.values[0].value, str) and SQL.match(node.values[0].value):
            lines.append(node.lineno)
    return sorted(set(lines))


def imports(tree: ast.AST, module: str, is_package: bool, known: set[str]) -> list[tuple[str, int, bool]]:
    """(imported module of the package, line, at module level) for every import, wherever it stands:
    in a function, or under `if TYPE_CHECKING:` (which counts: it is a dependency all the same)."""
    nested = {id(n) for f in ast.walk(tree) if isinstance(f, (ast.FunctionDef, ast.AsyncFunctionDef))
              for n in ast.walk(f) if n is not f}
    root = module.split(".")[0]
    found = []
    for node in ast.walk(tree):
        targets = []
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = module.split(".")[: len(module.split(".")) + (1 if is_package else 0) - node.level]
                prefix = ".".join(base + ([node.module] if node.module else []))
            else:
                prefix = node.module or ""
            targets = [f"{prefix}.{alias.name}" if f"{prefix}.{alias.name}" in known else prefix for alias in node.names]
        for target in targets:
            if target.split(".")[0] != root:
                continue
            while target not in known and "." in target:
                target = target.rsplit(".", 1)[0]
            if target in known and target != module:
                found.append((target, node.lineno, id(node) not in nested))
    return found


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan's)."""
    index, low, stack, on_stack, found, counter = {}, {}, [], set(), [], [0]

    def visit(node: str) -> None:
        index[node] = low[node] = counter[0]
        counter[0] += 1
        stack.append(node)
        on_stack.add(node)
        for nxt in graph.get(node, ()):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return sorted(found)


def upward(module: str, target: str) -> bool:
    """Whether importing `target` from `module` breaks the floor rule."""
    (name, height), (target_name, target_height) = floor_of(module), floor_of(target)
    if name == target_name or height == target_height == BESIDE:
        return False
    return target_height >= height


def count(package: Path = PACKAGE) -> dict:
    known = modules(package)
    callbacks = dict.fromkeys(CALLBACKS, 0)
    callback_files, lookups, sql, up, graph = set(), 0, [], [], {}
    for module, path in known.items():
        source = path.read_text()
        tree = ast.parse(source)
        relative = str(path.relative_to(package.parent))
        for name, n in callback_mentions(source).items():
            callbacks[name] += n
            if n:
                callback_files.add(relative)
        floor = floor_of(module)[0]
        if floor != "cli":
            lookups += record_lookups(tree)
        if floor != "store":
            sql += [f"{relative}:{line}" for line in sql_statements(tree)]
        edges = imports(tree, module, path.name == "__init__.py", set(known))
        graph[module] = {target for target, _, top in edges if top}
        up += [f"{relative}:{line} imports {target}" for target, line, _ in edges if upward(module, target)]
    return {"callback_mentions": sum(callbacks.values()), "callback_mentions_by_name": callbacks,
            "callback_files": len(callback_files), "record_lookups_outside_cli": lookups,
            "sql_statements_outside_store": len(sql), "sql_outside_store": sql,
            "import_cycles": len(cycles(graph)), "cycles": cycles(graph),
            "upward_imports": len(up), "upward": sorted(set(up))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--package", type=Path, default=PACKAGE)
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results" / "architecture-counts.json")
    args = parser.parse_args()
    counts = count(args.package)
    for key in ("callback_mentions", "callback_files", "record_lookups_outside_cli", "sql_statements_outside_store",
                "import_cycles", "upward_imports"):
        print(f"{key}: {counts[key]}")
    for item in counts["sql_outside_store"] + [" ↔ ".join(c) for c in counts["cycles"]] + counts["upward"]:
        print(f"  {item}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(counts, indent=1) + "\n")


if __name__ == "__main__":
    main()
