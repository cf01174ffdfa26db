"""ARCHITECTURE.md's layer rules, checked on the source: which package may import which.

Every `import` counts, at module level or inside a function. The rule table below must equal
the package table of ARCHITECTURE.md (its "may import" and "never imports" columns), so that
the map and the code cannot drift apart.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("launcher", "app", "worker", "training", "models", "bench")

# package → what of ours it may import: a module, or a package and everything in it
MAY_IMPORT: dict[str, set[str]] = {
    "models": set(),
    "training": {"models"},
    "worker": {"training", "models"},
    "app": {
        "worker.policy",
        "worker.jobs",
        "worker.celery_app",
        "worker.payload",
        "worker.emulate_jobs",
        "training.presets",
        "training.progress",
        "models",  # torch-free modules only: checked below
    },
    "launcher": {"app", "worker", "training", "models"},
    "bench": {"launcher", "app", "worker", "training", "models"},
}
# package → third-party packages it never imports
NEVER_IMPORTS: dict[str, set[str]] = {
    "models": {"celery", "fastapi", "redis"},
    "training": {"celery", "fastapi", "redis"},
    "app": {"torch"},
}


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


SOURCES = {module_name(p): p for pkg in PACKAGES for p in sorted((ROOT / pkg).rglob("*.py"))}


def imports_of(module: str, source: str) -> list[tuple[int, str]]:
    """(line, module) of every import in `source`; `from x import y` names x.y if that is one
    of our modules, else x."""
    found: list[tuple[int, str]] = []
    is_package = SOURCES.get(module, Path()).name == "__init__.py"
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from the module's own package upwards
                parts = module.split(".")[: len(module.split(".")) - node.level + is_package]
                base = ".".join([*parts, *([node.module] if node.module else [])])
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                found.append((node.lineno, sub if sub in SOURCES else base))
    return found


def allowed(package: str, target: str) -> bool:
    return any(target == rule or target.startswith(f"{rule}.") for rule in MAY_IMPORT[package])


def violations(module: str, source: str) -> list[str]:
    """What `module` imports against the rules, one line each ("file:line imports x")."""
    package = module.split(".")[0]
    out = []
    for line, target in imports_of(module, source):
        top = target.split(".")[0]
        ours_not_allowed = top in PACKAGES and top != package and not allowed(package, target)
        if ours_not_allowed or top in NEVER_IMPORTS.get(package, set()):
            out.append(f"{module.replace('.', '/')}.py:{line} imports {target}")
    return out


def closure(module: str) -> set[str]:
    """Every module `module` imports, directly or through our modules (lazy imports too)."""
    seen: set[str] = set()
    todo = [module]
    while todo:
        current = todo.pop()
        for _, target in imports_of(current, SOURCES[current].read_text(encoding="utf-8")):
            if target not in seen:
                seen.add(target)
                if target in SOURCES:
                    todo.append(target)
    return seen


def architecture_table() -> dict[str, tuple[set[str], set[str]]]:
    """ARCHITECTURE.md's package table: package → (may import, never imports)."""
    text = (ROOT / "ARCHITECTURE.md").read_text(encoding="utf-8")
    rows: dict[str, tuple[set[str], set[str]]] = {}
    for line in text.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        name = re.fullmatch(r"`(\w+)/`", cells[0]) if len(cells) == 4 else None
        if name and name[1] in PACKAGES:

            def names(cell: str) -> set[str]:
                return set(re.findall(r"`([\w.]+)`", cell))

            rows[name[1]] = (names(cells[2]), names(cells[3]))
    return rows


def test_architecture_md_states_the_rules_this_test_checks() -> None:
    table = architecture_table()
    assert set(table) == set(PACKAGES)
    assert {p: may for p, (may, _) in table.items()} == MAY_IMPORT
    assert {p: never for p, (_, never) in table.items() if never} == NEVER_IMPORTS


def test_every_import_follows_the_layer_rules() -> None:
    assert SOURCES, "no sources found"
    found = [v for m, p in SOURCES.items() for v in violations(m, p.read_text(encoding="utf-8"))]
    assert found == []


def test_app_imports_only_torch_free_models_modules() -> None:
    used = {
        target
        for module, path in SOURCES.items()
        if module.split(".")[0] == "app"
        for _, target in imports_of(module, path.read_text(encoding="utf-8"))
        if target.split(".")[0] == "models"
    }
    assert used, "app imports no models module: is the scan broken?"
    heavy = {m: sorted(t for t in closure(m) if t.split(".")[0] == "torch") for m in used}
    assert {m: t for m, t in heavy.items() if t} == {}


@pytest.mark.parametrize(
    ("module", "source", "bad"),
    [
        ("app.routes.x", "def f():\n    import training.emulator.gan\n", "training.emulator.gan"),
        ("app.x", "from worker import engine\n", "worker.engine"),
        ("app.x", "import torch.nn\n", "torch.nn"),
        ("models.x", "from training.presets import PRESETS\n", "training.presets"),
        ("training.x", "from celery import Celery\n", "celery"),
        ("worker.x", "def f():\n    from app.main import create_app\n", "app.main"),
        ("training.emulator.x", "from ...worker import tasks\n", "worker.tasks"),
    ],
)
def test_a_forbidden_import_is_caught(module: str, source: str, bad: str) -> None:
    assert [v.split(" imports ")[1] for v in violations(module, source)] == [bad]


def test_allowed_imports_pass() -> None:
    ok = "from models import columns\nfrom worker.policy import EMULATE_TASK\nimport fastapi\n"
    assert violations("app.x", ok) == []
    assert violations("launcher.x", "from app.main import create_app\n") == []
