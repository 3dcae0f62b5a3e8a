"""The import rules of docs/ARCHITECTURE.md, checked on the source so a new import that breaks them fails here.

Every ``import`` statement is read (module level and inside functions alike), because a lazy import
still ties the packages together: a core function that imports streamlit breaks the DAG and the CLI.
"""

import ast
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

# package -> the project packages it may import (itself always allowed). Foundation modules first.
FOUNDATION = {"cxr_core.settings", "cxr_core.errors", "cxr_core.fsutil"}
ALLOWED = {
    "cxr_core.settings": set(),
    "cxr_core.errors": set(),
    "cxr_core.fsutil": set(),
    "cxr_core.metrics": FOUNDATION,
    "cxr_core.auth": FOUNDATION | {"cxr_core.registry"},  # logins go to the audit trail
    "cxr_core.imaging": FOUNDATION,
    "cxr_core.modelling": FOUNDATION | {"cxr_core.imaging", "cxr_core.registry"},
    "cxr_core.registry": FOUNDATION | {"cxr_core.metrics"},
    "cxr_core.pipeline": FOUNDATION
    | {"cxr_core.metrics", "cxr_core.imaging", "cxr_core.modelling", "cxr_core.registry"},
    "cxr_core.node": FOUNDATION | {"cxr_core.imaging", "cxr_core.modelling", "cxr_core.registry"},
    "cxr_core.cli": FOUNDATION
    | {
        "cxr_core.auth",
        "cxr_core.metrics",
        "cxr_core.imaging",
        "cxr_core.modelling",
        "cxr_core.registry",
        "cxr_core.pipeline",
        "cxr_core.node",
    },
    "cxr_core.__main__": {"cxr_core.cli"},
    "cxr_core.__init__": set(),
}
UI_FORBIDDEN = {"streamlit", "pages", "ui_common", "app"}
CORE_FORBIDDEN = {"streamlit", "ui", "pages", "ui_common", "app", "training", "bench", "tests"}


def imported_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return found


def unit_of(module: str) -> str:
    """``cxr_core.imaging.decode`` -> ``cxr_core.imaging``; other names -> their top-level package."""
    parts = module.split(".")
    if parts[0] != "cxr_core":
        return parts[0]
    return "cxr_core." + parts[1] if len(parts) > 1 else "cxr_core.__init__"


def module_name(path: Path) -> str:
    return ".".join(path.relative_to(ROOT).with_suffix("").parts)


CORE_FILES = sorted((ROOT / "cxr_core").rglob("*.py"))


@pytest.mark.parametrize("path", CORE_FILES, ids=lambda p: str(p.relative_to(ROOT)))
def test_core_modules_import_only_what_their_layer_allows(path):
    own = unit_of(module_name(path))
    assert own in ALLOWED, f"{own} has no import rule in this test and in docs/ARCHITECTURE.md"
    for module in imported_modules(path):
        unit = unit_of(module)
        assert unit not in CORE_FORBIDDEN, f"{path.name} imports {module}: the core never imports the UI"
        if unit.startswith("cxr_core.") and unit not in {own, "cxr_core.__init__"}:
            if module in {"cxr_core"}:
                continue
            assert unit in ALLOWED[own], f"{own} may not import {module} (allowed: {sorted(ALLOWED[own])})"


@pytest.mark.parametrize("path", sorted((ROOT / "ui").rglob("*.py")), ids=lambda p: p.name)
def test_view_models_are_streamlit_free(path):
    for module in imported_modules(path):
        assert unit_of(module) not in UI_FORBIDDEN, f"{path.name} imports {module}"


def test_pages_are_never_imported_by_anything_but_the_app():
    for path in [*CORE_FILES, *(ROOT / "ui").rglob("*.py"), *(ROOT / "training").rglob("*.py")]:
        assert not {unit_of(m) for m in imported_modules(path)} & {"pages", "ui_common"}, path


DAG_FILES = sorted((ROOT / "training" / "dags").glob("*.py"))


@pytest.mark.parametrize("path", DAG_FILES, ids=lambda p: p.name)
def test_dags_import_only_stdlib_pyyaml_and_airflow_at_parse_time(path):
    """Module-level imports of a DAG file: what the dag-processor runs on every parse.

    Imports inside task functions run in the worker (``register_model`` runs in the project's venv).
    """
    tree = ast.parse(path.read_text())
    top_level = set()
    for node in tree.body:
        if isinstance(node, ast.Import):
            top_level.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            top_level.add(node.module.split(".")[0])
    # Functions called at parse time (module-level calls) may import too: they are checked by
    # tests/test_airflow_dag.py, which parses the file in Airflow's own environment.
    # The DAG files' own stdlib-only helpers beside them (cxr_dag_support.py) are checked here too.
    siblings = {other.stem for other in DAG_FILES}
    allowed = set(sys.stdlib_module_names) | {"__future__", "airflow", "yaml"} | siblings
    assert top_level <= allowed, top_level - allowed


def test_modules_inside_a_package_import_each_other_in_one_direction_only():
    """No two modules of a package import each other (decode and dicom once did, through a function-level
    import): a cycle makes import order matter and hides which module owns what."""
    for package in sorted({path.parent for path in CORE_FILES}):
        names = {module_name(path): path for path in package.glob("*.py")}
        graph = {
            name: {m for m in imported_modules(path) if m in names} - {name} for name, path in names.items()
        }
        for name, targets in graph.items():
            for target in targets:
                assert name not in graph[target], f"{name} and {target} import each other"
