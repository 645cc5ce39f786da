"""The house rules of core/ (docs/architecture.md §1), read from the code itself: imports run one way through
the stage packages, core never imports streamlit, a long file names its seam, and no module points outside
the repository."""

from __future__ import annotations

import ast
import io
import re
import tokenize
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CORE = ROOT / "core"
# the stages in import order: a package may import the ones before it, never one after it
STAGES = ["common", "data", "users", "models", "training", "jobs", "personas", "serving", "experiments", "commands"]
LONG = 400


def _module(path: Path) -> str:
    return ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")


def _stage(module: str) -> str:
    """core.training.grid -> training; core.train (a command file at core/'s top) -> commands."""
    parts = module.split(".")
    return parts[1] if len(parts) > 2 or (CORE / parts[1]).is_dir() else "commands"


def _core_imports(path: Path) -> list[tuple[int, str]]:
    """(line, module) of every core import in the file, the lazy ones inside functions included."""
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("core.") and not node.level:
            out.append((node.lineno, node.module))
        elif isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names if a.name.startswith("core.")]
    return out


FILES = sorted(CORE.rglob("*.py"))


def test_every_package_of_core_is_a_known_stage():
    packages = {p.name for p in CORE.iterdir() if p.is_dir() and (p / "__init__.py").exists()}
    assert packages == set(STAGES) - {"commands"}, "a new package needs its place in STAGES and the docs"


def test_imports_never_run_back_up_the_pipeline():
    back = []
    for f in FILES:
        mine = STAGES.index(_stage(_module(f)))
        for line, target in _core_imports(f):
            if STAGES.index(_stage(target)) > mine:
                back.append(f"{f.relative_to(ROOT)}:{line} imports {target}")
    assert not back, "imports that run back up the pipeline:\n" + "\n".join(back)


def test_core_never_imports_streamlit():
    found = [f"{f.relative_to(ROOT)}:{n.lineno}" for f in FILES for n in ast.walk(ast.parse(f.read_text()))
             if (isinstance(n, ast.Import) and any(a.name.split(".")[0] == "streamlit" for a in n.names))
             or (isinstance(n, ast.ImportFrom) and (n.module or "").split(".")[0] == "streamlit")]
    assert not found, found


@pytest.mark.parametrize("path", [f for f in FILES if len(f.read_text().splitlines()) > LONG],
                         ids=lambda f: str(f.relative_to(ROOT)))
def test_a_long_file_names_the_seam_it_would_split_along(path):
    doc = ast.get_docstring(ast.parse(path.read_text())) or ""
    assert "Seam" in doc, f"{path.relative_to(ROOT)} has over {LONG} lines and no seam in its docstring"


def test_no_module_points_outside_the_repository():
    outside = [f"{f.relative_to(ROOT)}" for f in FILES if "DESIGN" in f.read_text() or "../shared" in f.read_text()]
    assert not outside, outside


def test_every_config_field_is_in_the_usage_docs():
    """docs/usage.md lists TrainConfig's fields; a field added without a line there is missed by its readers."""
    from core.training.config import TrainConfig

    usage = (ROOT / "docs" / "usage.md").read_text()
    missing = [name for name in TrainConfig.model_fields if f"| `{name}` |" not in usage]
    assert not missing, f"docs/usage.md has no row for {missing}"


# a measured figure: a decimal, or a number with a unit of time, size or ratio
FIGURE = re.compile(r"(?<![\w.])(\d+\.\d+|\d+(?:\.\d+)?\s?(?:s|ms|GB|MB|kB|%|x|min|h)\b|\d+x\b)")


def _comment_blocks(path: Path) -> list[tuple[int, str]]:
    """(first line, text) of each run of consecutive # comment lines."""
    blocks: list[tuple[int, str]] = []
    last = -2
    for tok in tokenize.generate_tokens(io.StringIO(path.read_text()).readline):
        if tok.type != tokenize.COMMENT:
            continue
        if tok.start[0] == last + 1 and blocks:
            blocks[-1] = (blocks[-1][0], blocks[-1][1] + " " + tok.string)
        else:
            blocks.append((tok.start[0], tok.string))
        last = tok.start[0]
    return blocks


def test_no_comment_in_core_holds_a_measurement_log():
    """Comments say why; figures live in docs/results/ (CONTRIBUTING.md). One figure in a comment is fine."""
    logs = [f"{f.relative_to(ROOT)}:{line}: {text[:100]}" for f in FILES for line, text in _comment_blocks(f)
            if len(FIGURE.findall(text)) > 1]
    assert not logs, "comments holding measured figures (move them to docs/results/):\n" + "\n".join(logs)
