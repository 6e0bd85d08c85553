"""Version matrix: the quick tests against the lowest and the newest supported dependencies.

::

    nox -l                          # list the sessions
    nox -s "newest-3.12"            # one session
    nox -s "lowest-3.10"            # CI runs it (scripts/test, CI=true) on fewer tests,
                                    # and newest-3.12 on the core and ASGI tests
    nox -s "newest-3.12" -- tests/flask     # only these tests

Sessions install with pip into fresh virtualenvs (nox's default backend) and run the quick,
framework-facing part of the suite. The pins in ``LOWEST`` are the lower bounds declared in
pyproject.toml: keep the two in step. The results are recorded in docs/compatibility.md.
"""

from __future__ import annotations

import os
from pathlib import Path

import nox

nox.options.sessions = ["newest", "lowest"]
nox.options.reuse_existing_virtualenvs = False
nox.options.error_on_missing_interpreters = True

# Interpreters installed with pyenv are found without activating them.
_PYENV = Path(os.environ.get("PYENV_ROOT", Path.home() / ".pyenv")) / "versions"
os.environ["PATH"] = os.pathsep.join(
    [*(str(p / "bin") for p in sorted(_PYENV.glob("3.*"))), os.environ.get("PATH", "")]
)

PYTHONS = ["3.10", "3.11", "3.12", "3.13"]
# pydantic 2.6 has no wheels for 3.13 (pydantic-core 2.16 predates it): the lowest set runs
# where its wheels exist.
LOWEST_PYTHONS = ["3.10", "3.12"]

#: The lower bounds of pyproject.toml, pinned exactly. fastapi 0.110.1 is the first release
#: that accepts starlette 0.37; flask 2.3.3 the first whose test client works with Werkzeug
#: 3.1 (2.3.0-2.3.2 read ``werkzeug.__version__``, which Werkzeug 3.1 removed).
LOWEST = [
    "pydantic==2.6.0",
    "starlette==0.37.2",
    "fastapi==0.110.1",
    "flask==2.3.3",
    "django==4.2",
]

EXTRAS = ".[starlette,flask,django,redis,postgres,cli,fastapi,client,prometheus,otel,celery]"
TEST_DEPS = [
    "pytest>=8",
    "pytest-django>=4.8",
    "pytest-timeout>=2.3",
    "hypothesis>=6.100",
    "anyio>=4",
    "httpx>=0.27",
    "uvicorn>=0.29",
    "gunicorn>=22",
    "flask-wtf>=1.2",
    "mypy>=1.10,<3",  # tests/_core/test_typing.py runs it on the handler overloads
    "pillow>=10",  # tests/testing/test_provider.py opens the images the provider makes
]
#: The framework-facing tests; arguments after ``--`` replace this selection.
QUICK = [
    "tests/_core",
    "tests/test_asgi.py",
    "tests/test_fastapi.py",
    "tests/flask",
    "tests/django",
    "tests/testing",
]
PYTEST = ["pytest", "-m", "not slow", "-p", "no:cacheprovider"]


def _versions(session: nox.Session) -> None:
    session.run(
        "python",
        "-c",
        "import importlib.metadata as m, sys; print(sys.version.split()[0], *(f'{p}=='"
        "+m.version(p) for p in ('pydantic','starlette','fastapi','flask','werkzeug','django')))",
    )


@nox.session(python=PYTHONS)
def newest(session: nox.Session) -> None:
    """Run the quick tests with the newest release of every dependency."""
    session.install("--upgrade", EXTRAS, *TEST_DEPS)
    _versions(session)
    session.run(*PYTEST, *(session.posargs or QUICK))


@nox.session(python=LOWEST_PYTHONS)
def lowest(session: nox.Session) -> None:
    """Run the quick tests with the lowest supported version of each framework and pydantic."""
    session.install(EXTRAS, *TEST_DEPS, *LOWEST)
    _versions(session)
    # Its feature is Django 5.1+: a skip here would fail the run under CI=true.
    too_new = "tests/django/test_views.py::test_login_required_middleware_lets_deliveries_through"
    session.run(*PYTEST, "--deselect", too_new, *(session.posargs or QUICK))
