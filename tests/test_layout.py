"""The house rules (README, "Layout"): who may import whom, read from the source.

Read with ``ast``, so an import inside a function counts too. Each package may import
only the packages listed for it; no module anywhere imports a script; bench scripts use
no private name of the packages; the Markdown reporter and the storage package load no
torch.
"""
from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPTS = ("build_cache", "train", "predict", "evaluate", "report")
# package -> the project's packages it may import (besides itself)
ALLOWED = {
    "common": set(),
    "pipeline": {"common"},
    "cache": {"common"},
    "models": {"common"},
    "synthetic": {"pipeline", "common"},
    "builder": {"pipeline", "cache", "common"},
    "training": {"cache", "pipeline", "models", "common"},
}
PROJECT = set(ALLOWED) | set(SCRIPTS)
# Generous: a cold start of Python on two busy cores.
START_TIMEOUT_S = 120


def imports(path: Path) -> list[tuple[str, tuple[str, ...]]]:
    """``(module, names)`` of every import in ``path``, relative imports resolved."""
    package = path.relative_to(REPO).parent.parts
    found = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found += [(alias.name, ()) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            module = node.module or ""
            if node.level:
                base = list(package[:len(package) - node.level + 1])
                module = ".".join([*base, module] if module else base)
            found.append((module, tuple(alias.name for alias in node.names)))
    return found


def top(module: str) -> str:
    return module.split(".")[0]


def package_files(package: str) -> list[Path]:
    return sorted((REPO / package).rglob("*.py"))


def every_module() -> list[Path]:
    return [*(p for package in ALLOWED for p in package_files(package)),
            *(REPO / f"{s}.py" for s in SCRIPTS), *sorted((REPO / "bench").glob("*.py"))]


def name(path: Path) -> str:
    return str(path.relative_to(REPO))


def test_every_package_of_the_tree_has_rules():
    packages = {p.parent.name for p in REPO.glob("*/__init__.py")} - {"tests"}
    assert packages == set(ALLOWED), f"packages without rules: {packages ^ set(ALLOWED)}"


@pytest.mark.parametrize("package", ALLOWED)
def test_packages_import_only_what_they_may(package):
    for path in package_files(package):
        for module, _ in imports(path):
            other = top(module)
            if other in PROJECT and other != package:
                assert other in ALLOWED[package], f"{name(path)} imports {module}: {package}/ may import " \
                                                  f"only {sorted(ALLOWED[package]) or 'nothing of the project'}"


@pytest.mark.parametrize("path", every_module(), ids=name)
def test_no_module_imports_a_script(path):
    for module, _ in imports(path):
        assert top(module) not in SCRIPTS, f"{name(path)} imports the script {module}"


@pytest.mark.parametrize("path", sorted((REPO / "bench").glob("*.py")), ids=name)
def test_benches_use_no_private_name_of_the_packages(path):
    for module, names in imports(path):
        private = [n for n in names if n.startswith("_") and not n.startswith("__")]
        assert not private, f"{name(path)} imports private {', '.join(private)} from {module}"
    tree = ast.parse(path.read_text())
    # Reaching into another library's internals is that script's own risk; into ours, a defect.
    outside = {alias.asname or alias.name.split(".")[0] for node in ast.walk(tree)
               if isinstance(node, (ast.Import, ast.ImportFrom))
               and top(getattr(node, "module", None) or node.names[0].name) not in PROJECT
               for alias in node.names}
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and node.attr.startswith("_") and not node.attr.startswith("__"):
            base = node.value.id if isinstance(node.value, ast.Name) else None
            assert base == "self" or base in outside, f"{name(path)}, line {node.lineno}: .{node.attr} is private"


def test_checkpoint_schema_and_dataset_live_in_training_only():
    assert not (REPO / "models" / "checkpoint.py").exists()
    assert not (REPO / "cache" / "dataset.py").exists()
    assert not (REPO / "cache" / "build.py").exists()


@pytest.mark.parametrize("modules, absent", [
    ("report, training, training.runs, training.report, training.folders, training.artifacts, training.plots",
     ("torch",)),
    ("cache, cache.format, cache.writer, cache.reader, cache.inspect", ("torch", "pipeline", "librosa")),
    ("builder", ("torch", "models", "training", "synthetic")),
])
def test_light_imports_stay_light(modules, absent):
    code = (f"import sys; import {modules}; "
            f"bad = [m for m in {absent!r} if m in sys.modules]; assert not bad, bad")
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True,
                          timeout=START_TIMEOUT_S)
    assert done.returncode == 0, done.stderr[-2000:]
