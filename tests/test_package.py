"""Packaging promises: a curated API, and a core that needs no framework or driver."""

from __future__ import annotations

import ast
import subprocess
import sys
import venv
from pathlib import Path

import pytest

import gptimg_webhooks

SRC = Path(__file__).resolve().parents[1] / "src" / "gptimg_webhooks"
CORE = [
    *sorted((SRC / "_core").glob("*.py")),
    SRC / "stores" / "__init__.py",
    SRC / "stores" / "memory.py",
    SRC / "stores" / "sqlite.py",
    SRC / "__init__.py",
]
OPTIONAL = {
    "starlette",
    "fastapi",
    "flask",
    "werkzeug",
    "django",
    "redis",
    "psycopg",
    "psycopg_pool",
    "httpx",
    "click",
    "rich",
    "uvicorn",
    "gunicorn",
    "anyio",
}


def test_all_is_sorted_and_every_name_exists() -> None:
    names = gptimg_webhooks.__all__
    assert names == sorted(names)
    assert len(names) == len(set(names))
    for name in names:
        assert hasattr(gptimg_webhooks, name), name


def test_public_names_are_exactly_all() -> None:
    # "@py..." names are pytest's assertion rewriting (the plugin entry point imports us).
    public = {n for n in vars(gptimg_webhooks) if not n.startswith(("_", "@"))}
    public -= {"annotations"}
    submodules = {"asgi", "flask", "django", "stores", "testing", "cli", "worker", "client"}
    assert public - submodules == set(gptimg_webhooks.__all__) - {"__version__"}


@pytest.mark.parametrize("path", CORE, ids=lambda p: p.name)
def test_core_modules_import_only_stdlib_and_pydantic(path: Path) -> None:
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            roots = {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            roots = {node.module.split(".")[0]}
        else:
            continue
        for root in roots:
            assert root == "pydantic" or root in sys.stdlib_module_names, (path.name, root)


#: Everything outside the core: stores, adapters and tooling. The core never imports them.
ABOVE_THE_CORE = ("stores", "asgi", "flask", "django", "fastapi", "cli", "testing", "worker")


def _package_imports(path: Path) -> set[str]:
    """Return the ``gptimg_webhooks`` subpackages a module imports, relative imports included."""
    package = ["gptimg_webhooks", *path.relative_to(SRC).parent.parts]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - node.level + 1]
                target = [*base, *(node.module.split(".") if node.module else [])]
                if not node.module:  # from . import x
                    target = [*base, node.names[0].name]
            else:
                target = (node.module or "").split(".")
        elif isinstance(node, ast.Import):
            target = node.names[0].name.split(".")
        else:
            continue
        if target[0] == "gptimg_webhooks" and len(target) > 1:
            found.add(target[1])
    return found


@pytest.mark.parametrize("path", sorted((SRC / "_core").glob("*.py")), ids=lambda p: p.name)
def test_core_never_imports_stores_adapters_or_tooling(path: Path) -> None:
    assert not _package_imports(path) & set(ABOVE_THE_CORE), path.name


def test_the_dependency_check_sees_relative_imports(tmp_path: Path) -> None:
    probe = SRC / "_core" / "_probe_for_test.py"
    probe.write_text("from ..stores import open_store\nfrom .. import worker\n")
    try:
        assert _package_imports(probe) == {"stores", "worker"}
    finally:
        probe.unlink()


def test_import_pulls_in_no_framework_or_driver() -> None:
    code = (
        "import sys, gptimg_webhooks\n"
        "import gptimg_webhooks.stores.sqlite, gptimg_webhooks.stores.memory\n"
        "print(' '.join(sorted({m.split('.')[0] for m in sys.modules})))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert not OPTIONAL & set(out.stdout.split())


@pytest.mark.slow
def test_works_with_only_the_core_dependencies_installed(tmp_path: Path) -> None:
    env_dir = tmp_path / "core-only"
    venv.create(env_dir, with_pip=True)
    python = env_dir / "bin" / "python"
    subprocess.run(
        [str(python), "-m", "pip", "install", "-q", "pydantic>=2.6,<3"],
        check=True,
        capture_output=True,
    )
    script = (
        "import importlib.util, sys\n"
        f"missing = [m for m in {sorted(OPTIONAL)!r} if importlib.util.find_spec(m)]\n"
        "assert not missing, missing\n"
        "import gptimg_webhooks as g\n"
        "hooks = g.Webhooks('whsec_x', store='memory://')\n"
        "seen = []\n"
        "hooks.on('generation.succeeded')(seen.append)\n"
        'body = b\'{"event":"generation.succeeded","data":{"generationId":"g"}}\'\n'
        "h = {'X-Gptimg-Signature': g.sign(body, 'whsec_x'), 'X-Gptimg-Event': "
        "'generation.succeeded', 'X-Gptimg-Delivery': '6f1c2d3e-0000-4000-8000-000000000000'}\n"
        "assert hooks.handle('POST', h, body).status == 200 and len(seen) == 1\n"
        "print('ok')\n"
    )
    out = subprocess.run(
        [str(python), "-c", script],
        capture_output=True,
        text=True,
        env={"PYTHONPATH": str(SRC.parent)},
        check=False,
    )
    assert out.stdout.strip() == "ok", out.stderr
