"""The layout rules of docs/architecture.md, checked on the source: import directions, no path edits, sizes.

Why a test: these rules keep each root runnable where it runs (``ml_scripts/``
in a container that has nothing else, the Lambda zip without torch), and a
break would only show on AWS. The checks read the code with ``ast``; nothing
is imported.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
ML_SCRIPTS = ROOT / "ml_scripts"
CHALICE_APP = ROOT / "chalice_app"
#: Third-party packages the Lambda zip must never need (chalice_app/requirements.txt ships none of them).
HEAVY = {"torch", "torchvision", "numpy", "PIL", "sagemaker", "smdebug", "onnx", "onnxruntime", "pandas"}
MAX_MODULE_LINES = 450
MAX_FUNCTION_LINES = 80


def _tracked(pattern: str) -> list[Path]:
    out = subprocess.run(["git", "ls-files", pattern], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    return [ROOT / line for line in out.split() if (ROOT / line).is_file()]


def _imports(path: Path) -> set[str]:
    """Top-level names of every module ``path`` imports, also inside functions (absolute imports only)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module)
    return names


def _roots(names: set[str]) -> set[str]:
    return {name.split(".")[0] for name in names}


def _ml_modules() -> set[str]:
    return {p.stem for p in ML_SCRIPTS.glob("*.py")}


def test_contract_imports_only_the_standard_library() -> None:
    roots = _roots(_imports(ML_SCRIPTS / "contract.py"))
    assert roots <= set(sys.stdlib_module_names), roots - set(sys.stdlib_module_names)


@pytest.mark.parametrize("path", sorted(ML_SCRIPTS.glob("*.py")), ids=lambda p: p.name)
def test_ml_scripts_import_only_their_siblings_of_ours(path: Path) -> None:
    """In the container there is only the source dir: no breedline, chalicelib or bench."""
    ours = _roots(_imports(path)) & {"breedline", "chalicelib", "bench", "app", "tests"}
    assert not ours, f"{path.name} imports {ours}"


def test_the_lambda_imports_only_chalicelib_and_contract_of_ours() -> None:
    ml_modules = _ml_modules()
    for path in [CHALICE_APP / "app.py", *sorted((CHALICE_APP / "chalicelib").glob("*.py"))]:
        roots = _roots(_imports(path))
        assert not roots & HEAVY, f"{path.name} imports {roots & HEAVY}: the Lambda zip has none of them"
        assert not roots & {"breedline", "bench"}, f"{path.name} imports operator tooling"
        assert roots & ml_modules <= {"contract"}, f"{path.name} imports {roots & ml_modules} from ml_scripts"


def _breedline_imports(package: str) -> set[str]:
    names: set[str] = set()
    for path in (ROOT / "breedline" / package).glob("*.py"):
        names |= {n for n in _imports(path) if n.startswith("breedline.")}
    return {".".join(n.split(".")[:2]) for n in names}


def test_build_is_below_both_the_local_runtime_and_the_deploy_tool() -> None:
    assert not _breedline_imports("build") - {"breedline.build"}
    assert "breedline.deploy" not in _breedline_imports("local")
    assert "breedline.local" not in _breedline_imports("deploy")


def _edits_sys_path(tree: ast.AST) -> bool:
    for node in ast.walk(tree):
        target = node.func.value if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) else None
        if isinstance(node, (ast.Assign, ast.AugAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            target = next((t.value if isinstance(t, ast.Subscript) else t for t in targets), None)
        if isinstance(target, ast.Attribute) and target.attr == "path" and getattr(target.value, "id", "") == "sys":
            return True
    return False


def test_nothing_but_the_tests_conftest_edits_sys_path() -> None:
    """The editable install's .pth file is the one place the three roots go on the path."""
    offenders = [str(p.relative_to(ROOT)) for p in _tracked("*.py")
                 if p != ROOT / "tests" / "conftest.py" and _edits_sys_path(ast.parse(p.read_text(encoding="utf-8")))]
    assert offenders == []


def test_the_detector_sees_a_path_edit() -> None:
    assert _edits_sys_path(ast.parse("import sys\nsys.path.insert(0, 'x')"))
    assert _edits_sys_path(ast.parse("import sys\nsys.path[:0] = ['x']"))
    assert not _edits_sys_path(ast.parse("import os\nos.path.join('a', 'b')"))


def test_modules_and_functions_stay_small() -> None:
    """One job per module, one step per function (tests excepted)."""
    too_big = []
    for path in _tracked("*.py"):
        rel = path.relative_to(ROOT)
        if rel.parts[0] == "tests":
            continue
        source = path.read_text(encoding="utf-8")
        if source.count("\n") > MAX_MODULE_LINES:
            too_big.append(f"{rel}: {source.count(chr(10))} lines")
        for node in ast.walk(ast.parse(source)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                length = node.end_lineno - node.lineno + 1
                if length > MAX_FUNCTION_LINES:
                    too_big.append(f"{rel}:{node.lineno} {node.name}(): {length} lines")
    assert too_big == []


def test_no_two_modules_share_a_file_name() -> None:
    """A file name says what is inside; package markers and entry points excepted."""
    seen: dict[str, Path] = {}
    clashes = []
    for path in _tracked("*.py"):
        rel = path.relative_to(ROOT)
        if rel.parts[0] == "tests" or path.name in {"__init__.py", "__main__.py", "cli.py", "conftest.py"}:
            continue
        if path.name in seen:
            clashes.append(f"{seen[path.name].relative_to(ROOT)} and {rel}")
        seen[path.name] = path
    assert clashes == []
