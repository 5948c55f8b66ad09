"""The layering holds: serving -> router -> registry -> bricks, the CLI on top; a lower layer never imports a
higher one. Read from the source (every import statement, top-level or inside a function)."""

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
ORDER = ["bricks", "registry", "router", "serving", "cli"]  # each may import only those before it


def _imported_packages(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            out.add(node.module.split(".")[0])
    return out


def test_no_layer_imports_a_higher_one():
    wrong = []
    for rank, package in enumerate(ORDER):
        higher = set(ORDER[rank + 1:])
        for path in sorted((ROOT / package).rglob("*.py")):
            for name in sorted(_imported_packages(path) & higher):
                wrong.append(f"{path.relative_to(ROOT)} imports {name}")
    assert not wrong, "\n".join(wrong)


def test_the_layers_exist():
    assert all((ROOT / p / "__init__.py").is_file() for p in ORDER)


def test_tests_of_a_layer_need_no_higher_layer():
    """tests/bricks runs without registry, router, serving or the CLI, and so on up."""
    wrong = []
    for rank, package in enumerate(ORDER):
        higher = set(ORDER[rank + 1:])
        for path in sorted((ROOT / "tests" / package).rglob("*.py")):
            for name in sorted(_imported_packages(path) & higher):
                wrong.append(f"{path.relative_to(ROOT)} imports {name}")
    assert not wrong, "\n".join(wrong)


def test_the_cli_starts_without_torch():
    """`brick --help` and the command table load no model code: torch is imported by the commands that run."""
    import subprocess
    import sys

    code = "import sys, cli.main; assert 'torch' not in sys.modules, 'torch imported at CLI start'"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)
