from __future__ import annotations

import json

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
