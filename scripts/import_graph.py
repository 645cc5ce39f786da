"""Print the import graph of core/: modules, import arrows, layers and circles (docs/architecture.md §1).

    .venv/bin/python scripts/import_graph.py [--root DIR] [--packages] [--edges]

Every import of a core module counts, the lazy ones inside functions too; relative imports are resolved.
A layer is a module's longest chain of imports down to a module that imports none; a circle is a set of
modules that import each other round. Works on any checkout (``--root``), so two commits can be compared.
"""

from __future__ import annotations

import argparse
import ast
from pathlib import Path

import networkx as nx


def module_name(root: Path, path: Path) -> str:
    return ".".join(path.relative_to(root).with_suffix("").parts).removesuffix(".__init__")


def imports(root: Path, path: Path, known: set[str]) -> set[str]:
    """The core modules ``path`` imports (``from core.x import y`` counts core.x.y where that is a module)."""
    me = module_name(root, path)
    package = me if path.name == "__init__.py" else me.rpartition(".")[0]
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name in known}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                up = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join(up + ([base] if base else []))
            for a in node.names:
                sub = f"{base}.{a.name}"
                if sub in known:
                    out.add(sub)
                elif base in known:
                    out.add(base)
    return out - {me}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--root", default=str(Path(__file__).resolve().parents[1]), help="a checkout (default: this one)")
    ap.add_argument("--edges", action="store_true", help="also list every arrow")
    ap.add_argument("--packages", action="store_true",
                    help="one node per package of core/ (a module at core/'s top is its own node)")
    args = ap.parse_args(argv)
    root = Path(args.root)
    files = sorted((root / "core").rglob("*.py"))
    known = {module_name(root, f) for f in files}
    g = nx.DiGraph()
    g.add_nodes_from(known)
    for f in files:
        g.add_edges_from((module_name(root, f), t) for t in imports(root, f, known))
    if args.packages:  # core.training.grid -> core.training
        def pkg(m: str) -> str:
            return ".".join(m.split(".")[:2])
        g = nx.DiGraph((pkg(a), pkg(b)) for a, b in g.edges() if pkg(a) != pkg(b))
        g.add_nodes_from({pkg(m) for m in known})
        known = set(g.nodes)
    circles = [c for c in nx.strongly_connected_components(g) if len(c) > 1]
    dag = nx.condensation(g)
    layers = nx.dag_longest_path_length(dag) + 1 if len(dag) else 0
    print(f"{'packages' if args.packages else 'modules'} {len(known)}  arrows {g.number_of_edges()}  layers {layers}  circles {len(circles)}")
    for c in circles:
        print("circle: " + " ".join(sorted(c)))
    if args.edges:
        for a, b in sorted(g.edges()):
            print(f"{a} -> {b}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
