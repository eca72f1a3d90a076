"""Who may import whom, for training/, models/, the training scripts and their benches (issue 13).

Read from the source (``ast``), so that an import inside a function counts too.
"""
from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPTS = ("train", "evaluate", "predict", "report", "build_cache")
TRAINING_SCRIPTS = ("train.py", "evaluate.py", "predict.py", "report.py")
TRAINING_BENCHES = ("bench/bench_input.py", "bench/bench_loader.py", "bench/mfcc_svm.py", "bench/random_cache.py")
# Generous: a cold start of Python on two busy cores.
START_TIMEOUT_S = 120


def imports(path: Path) -> list[tuple[str, tuple[str, ...]]]:
    """``(module, names)`` of every import in ``path`` (relative imports resolved within its package)."""
    package = ".".join(path.relative_to(REPO).parent.parts)
    found = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found += [(alias.name, ()) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            module = node.module or ""
            if node.level:
                base = package.split(".")[:len(package.split(".")) - node.level + 1]
                module = ".".join([*base, module] if module else base)
            found.append((module, tuple(alias.name for alias in node.names)))
    return found


def top_level(module: str) -> str:
    return module.split(".")[0]


def sources(folder: str) -> list[Path]:
    return sorted((REPO / folder).glob("*.py"))


@pytest.mark.parametrize("path", [*TRAINING_SCRIPTS, *TRAINING_BENCHES])
def test_no_script_or_bench_imports_a_script_or_a_private_name(path):
    for module, names in imports(REPO / path):
        assert top_level(module) not in SCRIPTS, f"{path} imports the script {module}"
        private = [name for name in names if name.startswith("_") and not name.startswith("__")]
        assert not private, f"{path} imports private {', '.join(private)} from {module}"


@pytest.mark.parametrize("path", TRAINING_BENCHES)
def test_benches_use_no_private_attribute_of_the_packages(path):
    tree = ast.parse((REPO / path).read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and node.attr.startswith("_") and not node.attr.startswith("__"):
            assert isinstance(node.value, ast.Name) and node.value.id == "self", \
                f"{path}, line {node.lineno}: .{node.attr} is private"


@pytest.mark.parametrize("path", sources("models"), ids=lambda p: p.name)
def test_models_import_only_common(path):
    for module, _ in imports(path):
        assert top_level(module) not in {"cache", "pipeline", "training", "builder", "synthetic", *SCRIPTS}, \
            f"models/{path.name} imports {module}: models are tensors in, logits out"


@pytest.mark.parametrize("path", sources("training"), ids=lambda p: p.name)
def test_training_imports_no_builder_and_no_script(path):
    for module, _ in imports(path):
        assert top_level(module) not in {"builder", "synthetic", *SCRIPTS}, f"training/{path.name} imports {module}"


def test_checkpoint_schema_lives_in_training_only():
    assert not (REPO / "models" / "checkpoint.py").exists()
    assert not (REPO / "cache" / "dataset.py").exists()


def test_report_and_the_run_readers_import_no_torch():
    code = ("import sys, report, training, training.runs, training.report, training.folders, training.artifacts, "
            "training.plots, training.errors; assert 'torch' not in sys.modules, 'torch was imported'")
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True,
                          timeout=START_TIMEOUT_S)
    assert done.returncode == 0, done.stderr[-2000:]
