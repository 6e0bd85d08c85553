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
    submodules = {"asgi", "fastapi", "flask", "django", "stores", "testing", "cli", "worker"}
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
