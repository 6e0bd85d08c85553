from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import shutil
import subprocess

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gptimg_webhooks import ConfigurationError, Webhooks, sign, verify
from gptimg_webhooks._core.signature import SECRET_ENV, Verifier, parse_secrets
from tests.support.services import unavailable

from .conftest import SECRET, VECTOR_BODY, VECTOR_SIGNATURE


def test_provider_vector_from_the_issue() -> None:
    assert len(VECTOR_BODY) == 351
    assert sign(VECTOR_BODY, SECRET) == VECTOR_SIGNATURE
    assert verify(VECTOR_BODY, VECTOR_SIGNATURE, SECRET) is not None


def test_vectors_computed_by_node_at_test_time_verify() -> None:
    node = shutil.which("node")
    if node is None:
        unavailable("node is not installed: cannot compute fresh vectors with crypto.createHmac")
    cases = []
    for i in range(40):
        secret = "whsec_" + os.urandom(16).hex()
        body = os.urandom(i * 7) if i % 3 == 0 else json.dumps({"i": i, "s": "é✓"}).encode()
        cases.append({"secret": secret, "body": base64.b64encode(body).decode()})
    script = (
        "const crypto = require('crypto');"
        "const cases = JSON.parse(require('fs').readFileSync(0, 'utf8'));"
        "console.log(JSON.stringify(cases.map(c => crypto.createHmac('sha256', c.secret)"
        ".update(Buffer.from(c.body, 'base64')).digest('hex'))));"
    )
    out = subprocess.run(
        [node, "-e", script], input=json.dumps(cases), capture_output=True, text=True, check=True
    )
    expected = json.loads(out.stdout)
    assert len(expected) == len(cases)
    for case, signature in zip(cases, expected, strict=True):
        body = base64.b64decode(case["body"])
        assert sign(body, case["secret"]) == signature
        assert verify(body, signature, case["secret"]) is not None


def test_key_is_the_literal_secret_not_base64_decoded() -> None:
    decoded_key = base64.b64decode(SECRET.removeprefix("whsec_") + "==")
    svix_style = hmac.new(decoded_key, VECTOR_BODY, hashlib.sha256).hexdigest()
    assert verify(VECTOR_BODY, svix_style, SECRET) is None


def test_long_secret_is_hashed_like_hmac_does() -> None:
    secret = "whsec_" + "a" * 100
    assert sign(b"x", secret) == hmac.new(secret.encode(), b"x", hashlib.sha256).hexdigest()


def test_uppercase_signature_is_accepted() -> None:
    assert verify(VECTOR_BODY, VECTOR_SIGNATURE.upper(), SECRET) is not None


@pytest.mark.parametrize(
    "header",
    [
        "",
        VECTOR_SIGNATURE[:-1],
        VECTOR_SIGNATURE + "0",
        " " + VECTOR_SIGNATURE,
        VECTOR_SIGNATURE + " ",
        f"sha256={VECTOR_SIGNATURE}",
        f'"{VECTOR_SIGNATURE}"',
        f"{VECTOR_SIGNATURE},{VECTOR_SIGNATURE}",
        f"{VECTOR_SIGNATURE}, {VECTOR_SIGNATURE}",
        VECTOR_SIGNATURE[:-1] + "é",
        VECTOR_SIGNATURE[:-2] + "\xff\xfe",
        "g" * 64,
        None,
    ],
)
def test_malformed_signature_is_a_mismatch_not_an_error(header: str | None) -> None:
    assert verify(VECTOR_BODY, header, SECRET) is None


@given(st.text(max_size=200))
def test_any_header_text_never_raises(header: str) -> None:
    assert verify(VECTOR_BODY, header, SECRET) is None or header.lower() == VECTOR_SIGNATURE


def test_rotation_accepts_any_secret_and_says_which_matched() -> None:
    old, new = "whsec_old", "whsec_new"
    verifier = Verifier([new, old])
    match = verifier.verify(VECTOR_BODY, sign(VECTOR_BODY, old))
    assert match is not None
    assert match.index == 1
    assert match.id == verifier.secrets[1].id
    assert old not in repr(verifier) and old not in repr(match)
    assert verifier.verify(VECTOR_BODY, sign(VECTOR_BODY, "whsec_other")) is None


@pytest.mark.parametrize("bad", ["", "   ", ",", "whsec_a,,whsec_b", " , "])
def test_blank_secret_fails_at_startup(bad: str) -> None:
    with pytest.raises(ConfigurationError, match="empty or blank"):
        Webhooks(bad, store="memory://")


def test_missing_secret_fails_at_startup_naming_the_env_var(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv(SECRET_ENV, raising=False)
    with pytest.raises(ConfigurationError, match=SECRET_ENV):
        Webhooks(store="memory://")
    with pytest.raises(ConfigurationError, match="no webhook secret"):
        Webhooks([], store="memory://")


def test_env_holds_several_comma_separated_secrets(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(SECRET_ENV, "whsec_one, whsec_two")
    assert parse_secrets(None) == ["whsec_one", "whsec_two"]
    hooks = Webhooks(store="memory://")
    assert hooks.verifier.verify(b"x", sign(b"x", "whsec_two")) is not None


@pytest.mark.parametrize(
    ("value", "said"),
    [
        ("mysecret", "does not start with 'whsec_'"),
        ("gimg_live_0123456789", "does not start with 'whsec_'"),
        ("whsec_", "only the 'whsec_' prefix"),
        ("whsec_...", "placeholder"),
        ('"whsec_abc123"', "quotes around it"),
        ("'whsec_abc123'", "quotes around it"),
        ("whsec_abc 123", "whitespace or control characters"),
        ("whsec_abc\x00123", "whitespace or control characters"),
    ],
)
def test_a_secret_that_could_never_verify_fails_at_startup(value: str, said: str) -> None:
    for make in (lambda: Webhooks(value, store="memory://"), lambda: sign(b"{}", value)):
        with pytest.raises(ConfigurationError, match=said) as caught:
            make()
        assert "abc123" not in str(caught.value) and "mysecret" not in str(caught.value)


def test_a_quoted_secret_in_the_environment_names_its_position(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv(SECRET_ENV, 'whsec_new,"whsec_old"')
    with pytest.raises(ConfigurationError, match=r"secret #1 has quotes around it"):
        parse_secrets(None)


def test_whitespace_around_a_secret_is_trimmed_not_refused() -> None:
    assert parse_secrets(" whsec_one ,\twhsec_two\n") == ["whsec_one", "whsec_two"]
