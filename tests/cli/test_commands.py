from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from gptimg_webhooks import sign

from .conftest import SECRET, Run

COMMANDS = [
    [],
    ["sign"],
    ["verify"],
    ["send"],
    ["listen"],
    ["demo"],
    ["provider"],
    ["ledger"],
    ["ledger", "list"],
    ["ledger", "show"],
    ["ledger", "replay"],
    ["ledger", "prune"],
    ["worker"],
]


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: " ".join(c) or "main")
def test_every_command_has_help(cli: Run, command: list[str]) -> None:
    done = cli(*command, "--help")
    assert done.returncode == 0, done.stderr
    assert "Usage: gptimg-webhooks" in done.stdout


def test_main_help_documents_the_exit_codes(cli: Run) -> None:
    out = cli("--help").stdout
    assert "3 endpoint disabled" in out.replace("\n", " ").replace("  ", " ")


def test_sign_prints_the_signature_of_stdin_exactly(cli: Run) -> None:
    body = b'{"event":"generation.succeeded","data":{"generationId":"g"}}\n'
    done = cli("sign", input=body)
    assert done.returncode == 0
    assert done.stdout.strip() == sign(body, SECRET)


def test_sign_reads_a_file_and_prints_json(cli: Run, tmp_path) -> None:  # type: ignore[no-untyped-def]
    (tmp_path / "body.json").write_bytes(b"{}")
    done = cli("sign", "body.json", "--json", "--secret-env", "OTHER", env={"OTHER": "whsec_o"})
    assert json.loads(done.stdout) == {"signature": sign(b"{}", "whsec_o"), "bytes": 2}


def test_missing_secret_is_a_usage_error_naming_the_variable(cli: Run) -> None:
    done = cli("sign", input=b"{}", env={"GPTIMG_WEBHOOK_SECRET": ""})
    assert done.returncode == 2
    assert "GPTIMG_WEBHOOK_SECRET" in done.stderr


def test_unknown_store_scheme_is_a_usage_error(cli: Run) -> None:
    done = cli("ledger", "list", "--store", "nosuch://x")
    assert done.returncode == 2
    assert "unknown store URL scheme" in done.stderr


@pytest.mark.parametrize(
    ("url", "said"),
    [
        ("memory://?max_records=abc", "invalid store URL 'memory://?max_records=abc'"),
        ("redis://127.0.0.1:notaport/0", "'redis://127.0.0.1:notaport/0'"),
        ("redis://user:hunter2@127.0.0.1:notaport/0", "redis://user:***@127.0.0.1"),
        ("mysql://x", "unknown store URL scheme in 'mysql://x'"),
    ],
)
@pytest.mark.parametrize("command", [["ledger", "list"], ["ledger", "show", "abcdefgh"]])
def test_a_bad_store_url_is_one_line_and_exit_2(
    cli: Run, url: str, said: str, command: list[str]
) -> None:
    done = cli(*command, "--store", url)
    assert done.returncode == 2, done.stderr
    assert said in done.stderr
    assert "Traceback" not in done.stderr and "hunter2" not in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1


def test_listen_with_an_unknown_store_exits_2_in_one_line(cli: Run) -> None:
    done = cli("listen", "--port", "0", "--store", "mysql://x")
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        "Error: unknown store URL scheme in 'mysql://x' (known: django://, memory://, "
        "postgres://, postgresql://, redis://, rediss://, sqlite://)"
    ]


def test_django_store_without_settings_module_says_what_to_set(cli: Run) -> None:
    done = cli("ledger", "list", "--store", "django://", env={"DJANGO_SETTINGS_MODULE": None})  # type: ignore[dict-item]
    assert done.returncode == 2
    assert "set DJANGO_SETTINGS_MODULE" in done.stderr and "Traceback" not in done.stderr


def test_django_store_opens_with_the_projects_settings(cli: Run, tmp_path) -> None:  # type: ignore[no-untyped-def]
    from tests.support.servers import ROOT

    example = ROOT / "examples" / "django_app"
    env = {
        "DJANGO_SETTINGS_MODULE": "config.settings",
        "PYTHONPATH": str(example),
        "GPTIMG_EXAMPLE_DATA_DIR": str(tmp_path),
    }
    migrate = subprocess.run(
        [sys.executable, str(example / "manage.py"), "migrate", "--verbosity", "0"],
        env={**os.environ, "GPTIMG_WEBHOOK_SECRET": SECRET, **env},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert migrate.returncode == 0, migrate.stderr
    done = cli("ledger", "list", "--store", "django://", "--json", env=env)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == []


WORKER_APP = """
from gptimg_webhooks import Webhooks

hooks = Webhooks(store="{store}", mode="deferred", include_shared=False)
"""


def test_worker_with_an_app_that_does_not_import_exits_4(cli: Run) -> None:
    done = cli("worker", "--app", "nosuch:hooks", "--once")
    assert done.returncode == 4
    assert "cannot load 'nosuch:hooks'" in done.stderr and "Traceback" not in done.stderr


def test_worker_with_an_app_missing_its_secret_exits_2_in_one_line(cli: Run, tmp_path) -> None:  # type: ignore[no-untyped-def]
    (tmp_path / "deferred.py").write_text(WORKER_APP.format(store="memory://"))
    done = cli("worker", "--app", "deferred:hooks", "--once", env={"GPTIMG_WEBHOOK_SECRET": None})  # type: ignore[dict-item]
    assert done.returncode == 2
    assert "no webhook secret configured" in done.stderr and "Traceback" not in done.stderr


def test_worker_once_with_the_store_down_exits_4(cli: Run, tmp_path) -> None:  # type: ignore[no-untyped-def]
    from tests.support.servers import free_port

    closed = f"redis://127.0.0.1:{free_port()}/0"
    (tmp_path / "deferred.py").write_text(WORKER_APP.format(store=closed))
    done = cli("worker", "--app", "deferred:hooks", "--once")
    assert done.returncode == 4, done.stderr
    assert "ledger store unavailable" in done.stderr and "Traceback" not in done.stderr


def test_an_app_that_raises_on_import_exits_4_without_its_traceback(cli: Run, tmp_path) -> None:  # type: ignore[no-untyped-def]
    (tmp_path / "broken.py").write_text("raise KeyError('DATABASE_URL')\n")
    done = cli("ledger", "replay", "--state", "failed", "--app", "broken:hooks")
    assert done.returncode == 4
    assert "KeyError" in done.stderr and "Traceback" not in done.stderr


@pytest.mark.parametrize(
    ("secret", "said"),
    [
        ("mysecret", "does not start with 'whsec_'"),
        ("whsec_", "only the 'whsec_' prefix"),
        ('"whsec_abc"', "quotes around it"),
    ],
)
def test_sign_refuses_a_secret_that_could_never_verify(cli: Run, secret: str, said: str) -> None:
    done = cli("sign", input=b"{}", env={"GPTIMG_WEBHOOK_SECRET": secret})
    assert done.returncode == 2
    assert said in done.stderr
    assert "abc" not in done.stderr and "mysecret" not in done.stderr  # never echoed
