"""The layer rules (README, "How it works"): import-linter's contracts bite on a violation, the root modules that
import-linter cannot analyse (it takes packages only) import what their role allows, no module of the project (root
modules included, imports under TYPE_CHECKING too) is part of an import cycle, and no module reads another object's
private attribute."""

from __future__ import annotations

import ast
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import ROOT

PROJECT = {"parakeet", "server", "inference", "gpu_lock", "loadtest", "loadtest_report"}


def project_imports(module: Path) -> set[str]:
    """Dotted names of the project's modules that `module` imports (anywhere in the file, TYPE_CHECKING included)."""
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


def test_layers_inference_imports_only_the_engine_and_stays_a_face() -> None:
    """inference.py re-exports parakeet.engine's public names (the design's module, at most 60 lines)."""
    imports = project_imports(ROOT / "inference.py")
    assert imports and all(name.startswith("parakeet.engine") for name in imports), imports
    assert (ROOT / "inference.py").read_text().count("\n") <= 60


def test_layers_gpu_lock_imports_only_the_standard_library() -> None:
    imports = all_imports(ROOT / "gpu_lock.py") - {"__future__"}
    assert imports <= set(sys.stdlib_module_names), imports - set(sys.stdlib_module_names)


@pytest.mark.parametrize("module", ["loadtest.py", "loadtest_report.py"])
def test_layers_load_tester_imports_nothing_of_the_server(module: str) -> None:
    assert project_imports(ROOT / module) <= {"loadtest", "loadtest_report"}


def test_layers_every_package_module_sits_in_a_layer() -> None:
    layers = {"api", "jobs", "pipeline", "core", "engine"}
    modules = [p.relative_to(ROOT / "parakeet") for p in (ROOT / "parakeet").rglob("*.py")]
    outside = [str(m) for m in modules if m.parts[0] not in layers and str(m) != "__init__.py"]
    assert not outside, outside


@pytest.mark.parametrize(
    ("module", "line", "contract"),
    [
        ("parakeet/core/transcripts.py", "import parakeet.pipeline.batching", "Layers: api -> jobs -> pipeline"),
        ("parakeet/pipeline/long_audio.py", "import parakeet.api.errors", "Layers: api -> jobs -> pipeline"),
        ("parakeet/pipeline/batching.py", "import starlette.requests", "never import the HTTP framework"),
        ("parakeet/core/engine.py", "import torch", "Only parakeet.engine imports torch or NeMo"),
        ("parakeet/pipeline/worker.py", "import nemo", "Only parakeet.engine imports torch or NeMo"),
        ("parakeet/pipeline/batching.py", "import parakeet.engine.asr", "Nothing of the package imports the engine"),
        ("parakeet/engine/asr.py", "import parakeet.pipeline.batching", "The engine imports only the core"),
        ("parakeet/jobs/runner.py", "import parakeet.api.formats", "Layers: api -> jobs -> pipeline"),
        ("parakeet/pipeline/worker.py", "import parakeet.jobs.store", "Layers: api -> jobs -> pipeline"),
        ("parakeet/jobs/store.py", "import fastapi", "never import the HTTP framework"),
        ("parakeet/api/deps.py", "import server", "never imports a root module"),
        ("parakeet/api/uploads.py", "import numpy", "never touches arrays or audio codecs"),
        ("parakeet/pipeline/batching.py", "import parakeet.pipeline.worker", "No import cycle"),
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


def _module_name(path: Path) -> str:
    rel = path.relative_to(ROOT).with_suffix("")
    parts = list(rel.parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _project_graph() -> dict[str, set[str]]:
    """module -> the project modules it imports (a package import counts as its __init__), for every module of the
    package and the root modules."""
    files = [*(ROOT / "parakeet").rglob("*.py"), *(ROOT / f"{m}.py" for m in sorted(PROJECT - {"parakeet"}))]
    names = {_module_name(f) for f in files}
    graph: dict[str, set[str]] = {}
    for f in files:
        found = set()
        for name in project_imports(f):
            while name and name not in names:
                name = name.rpartition(".")[0]
            if name:
                found.add(name)
        graph[_module_name(f)] = found - {_module_name(f)}
    return graph


def test_layers_no_import_cycle_anywhere() -> None:
    graph = _project_graph()
    assert len(graph) > 30
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return path[path.index(nxt) :] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        path.pop()
        state[node] = 2
        return None

    for module in sorted(graph):
        if module not in state:
            assert visit(module) is None, f"import cycle: {' -> '.join(path)}"


def project_sources() -> list[Path]:
    """Every Python file of the project outside tests/: the package, the root modules, scripts (not virtual
    environments, hidden folders or caches)."""
    skip = {"tests", "node_modules", "__pycache__"}
    return sorted(
        p for p in ROOT.rglob("*.py")
        if not any(part in skip or part.startswith(".") for part in p.relative_to(ROOT).parts[:-1])
    )  # fmt: skip


# Documented public functions whose names start with an underscore (https://docs.python.org/3/library/os.html#os._exit).
PUBLIC_UNDERSCORED = {("os", "_exit")}


def test_layers_no_module_reads_another_objects_private_attributes() -> None:
    """`x._name` only on `self`, `cls` or the module's own names (a private attribute is its owner's business), in
    every Python file outside tests/."""
    offences = []
    sources = project_sources()
    assert ROOT / "server.py" in sources and ROOT / "parakeet" / "engine" / "asr.py" in sources
    for path in sources:
        tree = ast.parse(path.read_text())
        own = {n.name for n in ast.walk(tree) if isinstance(n, ast.ClassDef | ast.FunctionDef)}
        for node in ast.walk(tree):
            if (
                isinstance(node, ast.Attribute)
                and node.attr.startswith("_")
                and not node.attr.startswith("__")
                and not (isinstance(node.value, ast.Name) and node.value.id in {"self", "cls", *own})
                and not (isinstance(node.value, ast.Name) and (node.value.id, node.attr) in PUBLIC_UNDERSCORED)
            ):
                offences.append(f"{path.relative_to(ROOT)}:{node.lineno}: .{node.attr}")
    assert not offences, offences


def test_importing_server_is_cheap_and_side_effect_free() -> None:
    """No torch or NeMo, and no GPU claimed (a claim at import would end the process with its own code)."""
    code = (
        "import sys, gpu_lock; gpu_lock.claim_gpu = lambda *a, **k: sys.exit(7); import server; "
        "assert 'torch' not in sys.modules and 'nemo' not in sys.modules, 'heavy import'"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("PARAKEET_")}
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr


def test_layers_no_function_over_60_lines_and_no_module_over_450() -> None:
    """In every Python file outside tests/."""
    too_long = []
    for path in project_sources():
        source = path.read_text()
        if source.count("\n") > 450:
            too_long.append(f"{path.relative_to(ROOT)}: {source.count(chr(10))} lines")
        for node in ast.walk(ast.parse(source)):
            long_function = (
                isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
                and node.end_lineno is not None
                and node.end_lineno - node.lineno + 1 > 60
            )
            if long_function:
                too_long.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.name}()")
    assert not too_long, too_long


def test_no_file_edits_sys_path() -> None:
    """The project is installed (pip install -e . in scripts/setup.sh) and pytest's `pythonpath` names the tests'
    folders: no Python file of the project, tests included, assigns to, inserts into or extends sys.path."""
    offences = []
    for path in sorted(ROOT.rglob("*.py")):
        if any(
            part.startswith(".") or part in {"node_modules", "__pycache__"} for part in path.relative_to(ROOT).parts
        ):
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            target = None
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
                target = node.func.value  # sys.path.insert(...), .append(...), .extend(...)
            elif isinstance(node, ast.Assign | ast.AugAssign):
                targets = node.targets if isinstance(node, ast.Assign) else [node.target]
                target = next((t.value if isinstance(t, ast.Subscript) else t for t in targets), None)
            is_sys_path = isinstance(target, ast.Attribute) and target.attr == "path"
            if is_sys_path and isinstance(target.value, ast.Name) and target.value.id == "sys":
                offences.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    assert not offences, offences


def test_tests_start_uvicorn_in_at_most_8_places() -> None:
    """Real servers are started through the one launcher (tests/support/servers.py): its call sites in tests/ (and
    in-thread uvicorn servers) are at most 8, so a test that needs a socket reuses a fixture instead."""
    sites = []
    for path in sorted((ROOT / "tests").rglob("*.py")):
        if "support" in path.relative_to(ROOT).parts:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call):
                f = node.func
                name = f.attr if isinstance(f, ast.Attribute) else f.id if isinstance(f, ast.Name) else ""
                if name in {"start_server", "launch_uvicorn", "start_uvicorn", "Server"}:
                    sites.append(f"{path.relative_to(ROOT)}:{node.lineno} {name}")
    assert 0 < len(sites) <= 8, sites


def test_layers_the_checks_run_in_the_test_command_and_in_pre_commit() -> None:
    """scripts/test.sh runs scripts/check.sh before pytest; the pre-commit hooks run the same commands."""
    import yaml

    check = [ln for ln in (ROOT / "scripts" / "check.sh").read_text().splitlines() if ln.startswith(".venv/bin/")]
    assert check == [".venv/bin/ruff check .", ".venv/bin/ruff format --check .", ".venv/bin/mypy",
                     ".venv/bin/lint-imports --no-cache"]  # fmt: skip
    test_sh = (ROOT / "scripts" / "test.sh").read_text()
    assert test_sh.index("scripts/check.sh") < test_sh.index("pytest")
    hooks = yaml.safe_load((ROOT / ".pre-commit-config.yaml").read_text())["repos"][0]["hooks"]
    assert [h["entry"] for h in hooks] == [line.removesuffix(" .") for line in check]
