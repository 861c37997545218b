"""The layer rules (README, "How it works"): import-linter's contracts bite on a violation, and the root
modules that import-linter cannot analyse (it takes packages only) import what their role allows."""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import ROOT

PROJECT = {"parakeet", "server", "inference", "gpu_lock", "loadtest", "loadtest_report"}


def project_imports(module: Path) -> set[str]:
    """Dotted names of the project's modules that `module` imports (anywhere in the file)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(module.read_text())):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module]
        else:
            continue
        found |= {n for n in names if n.split(".")[0] in PROJECT}
    return found


def all_imports(module: Path) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(ast.parse(module.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module.split(".")[0])
    return found


def test_layers_inference_imports_only_the_core_of_the_project() -> None:
    imports = project_imports(ROOT / "inference.py")
    assert imports and all(name.startswith("parakeet.core") for name in imports), imports


def test_layers_gpu_lock_imports_only_the_standard_library() -> None:
    imports = all_imports(ROOT / "gpu_lock.py") - {"__future__"}
    assert imports <= set(sys.stdlib_module_names), imports - set(sys.stdlib_module_names)


@pytest.mark.parametrize("module", ["loadtest.py", "loadtest_report.py"])
def test_layers_load_tester_imports_nothing_of_the_server(module: str) -> None:
    assert project_imports(ROOT / module) <= {"loadtest", "loadtest_report"}


def test_layers_every_package_module_sits_in_a_layer() -> None:
    layers = {"api", "pipeline", "core"}
    modules = [p.relative_to(ROOT / "parakeet") for p in (ROOT / "parakeet").rglob("*.py")]
    outside = [str(m) for m in modules if m.parts[0] not in layers and str(m) != "__init__.py"]
    assert not outside, outside


@pytest.mark.parametrize(
    ("module", "line", "contract"),
    [
        ("parakeet/core/transcripts.py", "import parakeet.pipeline.batching", "Layers: api -> pipeline -> core"),
        ("parakeet/pipeline/long_audio.py", "import parakeet.api.errors", "Layers: api -> pipeline -> core"),
        ("parakeet/pipeline/batching.py", "import starlette.requests", "never import the HTTP framework"),
        ("parakeet/core/engine.py", "import torch", "never imports torch or NeMo"),
        ("parakeet/api/deps.py", "import server", "never imports a root module"),
    ],
)
def test_layers_import_linter_refuses_a_violation(tmp_path: Path, module: str, line: str, contract: str) -> None:
    """The same contracts (pyproject.toml) on a copy of the package with one forbidden import added."""
    shutil.copytree(ROOT / "parakeet", tmp_path / "parakeet", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    with open(tmp_path / module, "a") as f:
        f.write(f"\n{line}  # the violation under test\n")
    lint = Path(sys.executable).with_name("lint-imports")
    out = subprocess.run([str(lint), "--no-cache"], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert out.returncode == 1, out.stdout + out.stderr
    broken = [ln.removesuffix(" BROKEN") for ln in out.stdout.splitlines() if ln.endswith(" BROKEN")]
    assert any(contract in name for name in broken), out.stdout  # (an indirect import may break another too)


def test_layers_import_linter_keeps_the_tree_as_committed() -> None:
    lint = Path(sys.executable).with_name("lint-imports")
    out = subprocess.run([str(lint), "--no-cache"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "0 broken" in out.stdout


def test_layers_readme_module_map_names_every_module() -> None:
    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("## How it works") :]
    modules = [p for p in (ROOT / "parakeet").rglob("*.py") if p.name != "__init__.py"]
    missing = [str(p.relative_to(ROOT)) for p in modules if p.name not in section]
    assert not missing, f"README 'How it works' does not mention {missing}"
