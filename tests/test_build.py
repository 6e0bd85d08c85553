"""The distribution: sdist and wheel build, pass twine check, and the wheel runs a quickstart."""

from __future__ import annotations

import subprocess
import sys
import tarfile
import venv
import zipfile
from pathlib import Path

import httpx
import pytest

from gptimg_webhooks.testing import events, random_secret, signed
from tests.docs.test_quickstarts import PAGES, extract
from tests.support.servers import ROOT, free_port, running

pytestmark = pytest.mark.slow


def _run(*argv: str | Path, cwd: Path = ROOT) -> str:
    done = subprocess.run(
        [str(a) for a in argv], cwd=cwd, capture_output=True, text=True, timeout=600, check=False
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done.stdout


@pytest.fixture(scope="module")
def dist(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("dist")
    _run(sys.executable, "-m", "build", "--outdir", out, ROOT)
    return out


def _one(dist: Path, pattern: str) -> Path:
    found = sorted(dist.glob(pattern))
    assert len(found) == 1, found
    return found[0]


def test_sdist_and_wheel_pass_twine_check(dist: Path) -> None:
    wheel = _one(dist, "*.whl")
    sdist = _one(dist, "*.tar.gz")
    out = _run(sys.executable, "-m", "twine", "check", "--strict", wheel, sdist)
    assert out.count("PASSED") == 2


def test_sdist_holds_the_project_files_and_no_local_state(dist: Path) -> None:
    with tarfile.open(_one(dist, "*.tar.gz")) as archive:
        names = {name.split("/", 1)[1] for name in archive.getnames() if "/" in name}
    for needed in ("README.md", "LICENSE", "CHANGELOG.md", "pyproject.toml", "PKG-INFO"):
        assert needed in names, needed
    assert "src/gptimg_webhooks/py.typed" in names
    assert any(name.startswith("tests/") for name in names)
    junk = [
        name
        for name in names
        if "__pycache__" in name
        or name.endswith((".pyc", ".sqlite3", ".db", "-wal", "-shm"))
        or name.startswith((".venv", ".nox", "site/", "dist/", ".hypothesis"))
    ]
    assert not junk, junk


def test_wheel_holds_the_package_and_the_license_only(dist: Path) -> None:
    with zipfile.ZipFile(_one(dist, "*.whl")) as archive:
        names = archive.namelist()
    tops = {name.split("/", 1)[0] for name in names}
    assert tops == {"gptimg_webhooks", "gptimg_webhooks-0.1.0.dist-info"}
    assert "gptimg_webhooks/py.typed" in names
    assert "gptimg_webhooks-0.1.0.dist-info/licenses/LICENSE" in names
    assert not [name for name in names if "__pycache__" in name]


def test_wheel_with_the_starlette_extra_runs_the_quickstart(dist: Path, tmp_path: Path) -> None:
    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=True)
    python = env_dir / "bin" / "python"
    wheel = _one(dist, "*.whl")
    # As the Starlette quickstart says: the extra, and a server.
    _run(python, "-m", "pip", "install", "-q", f"{wheel}[starlette]", "uvicorn")
    app_dir = tmp_path / "app"
    assert extract(PAGES / "starlette.md", app_dir) == ["app.py"]
    where = _run(python, "-c", "import gptimg_webhooks; print(gptimg_webhooks.__file__)")
    assert where.startswith(str(env_dir)), where  # the installed wheel, not this checkout
    secret = random_secret()
    port = free_port()
    argv = [str(env_dir / "bin" / "uvicorn"), "app:app", "--port", str(port), "--app-dir", "."]
    env = {"GPTIMG_WEBHOOK_SECRET": secret, "GPTIMG_WEBHOOK_STORE": ""}
    with running(argv, port=port, cwd=app_dir, env=env, ready_path="/hooks/gptimg") as base:
        delivery = signed(events.succeeded(), secret)
        answer = httpx.post(
            base + "/hooks/gptimg", content=delivery.body, headers=delivery.headers, timeout=10
        )
        again = httpx.post(
            base + "/hooks/gptimg", content=delivery.body, headers=delivery.headers, timeout=10
        )
    assert (answer.status_code, answer.json()["status"]) == (200, "processed")
    assert (again.status_code, again.json()["status"]) == (200, "duplicate")
