"""``verify`` on a captured request: valid, or invalid with its cause named."""

from __future__ import annotations

import base64
import gzip
import hashlib
import hmac
import json
import uuid
from pathlib import Path

import pytest

from gptimg_webhooks import sign
from gptimg_webhooks.testing import events

from .conftest import SECRET, Run

BODY = events.succeeded(generation_id="gen_verify", error=None, prompt="café ☕").body


def headers(signature: str, **extra: str) -> list[str]:
    found = {
        "X-Gptimg-Signature": signature,
        "X-Gptimg-Delivery": str(uuid.uuid4()),
        "X-Gptimg-Event": "generation.succeeded",
        **extra,
    }
    return [arg for name, value in found.items() for arg in ("-H", f"{name}: {value}")]


def verify(cli: Run, tmp_path: Path, body: bytes, signature: str, **kw: object) -> tuple:  # type: ignore[type-arg]
    (tmp_path / "body").write_bytes(body)
    extra = kw.pop("headers", {})
    done = cli("verify", "body", *headers(signature, **extra), "--json", **kw)  # type: ignore[arg-type]
    report = json.loads(done.stdout)
    return done.returncode, [c["code"] for c in report["causes"]], report


def test_valid_request_exits_zero_and_names_the_secret(cli: Run, tmp_path: Path) -> None:
    (tmp_path / "body").write_bytes(BODY)
    done = cli("verify", "body", *headers(sign(BODY, SECRET)))
    assert done.returncode == 0
    assert done.stdout.startswith("valid: signed with secret #0")


def test_several_secrets_one_matching_is_valid(cli: Run, tmp_path: Path) -> None:
    env = {"GPTIMG_WEBHOOK_SECRET": f"whsec_old,{SECRET}"}
    code, causes, report = verify(cli, tmp_path, BODY, sign(BODY, SECRET), env=env)
    assert code == 0 and causes == [] and report["matched"]["index"] == 1


def test_uppercase_signature_is_only_a_warning(cli: Run, tmp_path: Path) -> None:
    code, causes, report = verify(cli, tmp_path, BODY, sign(BODY, SECRET).upper())
    assert code == 0 and report["valid"] and causes == []
    assert [w["code"] for w in report["warnings"]] == ["uppercase_signature"]


@pytest.mark.parametrize(
    "reserialise",
    [
        lambda p: json.dumps(p).encode(),
        lambda p: json.dumps(p, sort_keys=True, separators=(",", ":")).encode(),
        lambda p: json.dumps(p, separators=(",", ":")).encode(),  # \u escapes
        lambda p: json.dumps(p, indent=2).encode() + b"\n",
    ],
    ids=["default-separators", "sorted-keys", "ensure-ascii", "indented"],
)
def test_reserialised_body_is_named(cli: Run, tmp_path: Path, reserialise) -> None:  # type: ignore[no-untyped-def]
    changed = reserialise(json.loads(BODY))
    assert changed != BODY and json.loads(changed) == json.loads(BODY)
    code, causes, _ = verify(cli, tmp_path, changed, sign(BODY, SECRET))
    assert (code, causes) == (1, ["reserialized_body"])


@pytest.mark.parametrize(
    "reencode",
    [lambda b: b + b"\n", lambda b: b.replace(b",", b",\r\n"), lambda b: b"\xef\xbb\xbf" + b],
    ids=["trailing-newline", "crlf", "bom"],
)
def test_reencoded_bytes_are_named(cli: Run, tmp_path: Path, reencode) -> None:  # type: ignore[no-untyped-def]
    code, causes, _ = verify(cli, tmp_path, reencode(BODY), sign(BODY, SECRET))
    assert (code, causes) == (1, ["reserialized_body"])


@pytest.mark.parametrize("configured", [f'"{SECRET}"', f"'{SECRET}'"])
def test_quotes_around_the_configured_secret_are_named(
    cli: Run, tmp_path: Path, configured: str
) -> None:
    env = {"GPTIMG_WEBHOOK_SECRET": configured}
    code, causes, _ = verify(cli, tmp_path, BODY, sign(BODY, SECRET), env=env)
    assert (code, causes) == (1, ["secret_whitespace_or_quotes"])


def test_whitespace_in_the_signing_secret_is_named(cli: Run, tmp_path: Path) -> None:
    # The sender keyed with a trailing newline (the library refuses such a secret itself).
    signature = hmac.new((SECRET + "\n").encode(), BODY, hashlib.sha256).hexdigest()
    code, causes, _ = verify(cli, tmp_path, BODY, signature)
    assert (code, causes) == (1, ["secret_whitespace_or_quotes"])


def test_base64_decoded_key_is_named(cli: Run, tmp_path: Path) -> None:
    tail = SECRET.removeprefix("whsec_")
    key = base64.b64decode(tail + "=" * (-len(tail) % 4))
    signature = hmac.new(key, BODY, hashlib.sha256).hexdigest()
    code, causes, report = verify(cli, tmp_path, BODY, signature)
    assert (code, causes) == (1, ["base64_decoded_key"])
    assert "whole 'whsec_...' string" in report["causes"][0]["message"]


def test_sha256_prefix_is_named(cli: Run, tmp_path: Path) -> None:
    code, causes, _ = verify(cli, tmp_path, BODY, "sha256=" + sign(BODY, SECRET))
    assert (code, causes) == (1, ["sha256_prefix"])


@pytest.mark.parametrize("encoding", ["gzip", "deflate"])
def test_compressed_body_is_named(cli: Run, tmp_path: Path, encoding: str) -> None:
    import zlib

    packed = gzip.compress(BODY) if encoding == "gzip" else zlib.compress(BODY)
    extra = {"Content-Encoding": encoding}
    code, causes, report = verify(cli, tmp_path, packed, sign(BODY, SECRET), headers=extra)
    assert (code, causes) == (1, ["compressed_body"])
    assert "matches the decompressed body" in report["causes"][0]["message"]


def test_compressed_body_is_found_by_its_magic_bytes_alone(cli: Run, tmp_path: Path) -> None:
    code, causes, _ = verify(cli, tmp_path, gzip.compress(BODY), sign(BODY, SECRET))
    assert (code, causes) == (1, ["compressed_body"])


def test_wrong_secret_is_named_with_the_tampering_it_cannot_be_told_from(
    cli: Run, tmp_path: Path
) -> None:
    code, causes, report = verify(cli, tmp_path, BODY, sign(BODY, "whsec_someone_else"))
    assert (code, causes) == (1, ["wrong_secret_or_tampered_body"])
    assert report["answer"]["status"] == 401


def test_a_tampered_body_is_not_called_a_wrong_secret_alone(cli: Run, tmp_path: Path) -> None:
    tampered = BODY.replace(b"gen_verify", b"gen_verifz")
    code, causes, report = verify(cli, tmp_path, tampered, sign(BODY, SECRET))
    assert (code, causes) == (1, ["wrong_secret_or_tampered_body"])
    assert "changed after signing" in report["causes"][0]["message"]


def test_an_empty_body_is_named(cli: Run, tmp_path: Path) -> None:
    code, causes, _ = verify(cli, tmp_path, b"", sign(BODY, SECRET))
    assert (code, causes) == (1, ["empty_body"])


def test_a_truncated_body_is_named(cli: Run, tmp_path: Path) -> None:
    code, causes, _ = verify(cli, tmp_path, BODY[:100], sign(BODY, SECRET))
    assert (code, causes) == (1, ["body_not_json"])


def test_a_valid_signature_the_receiver_would_still_refuse_exits_one(
    cli: Run, tmp_path: Path
) -> None:
    (tmp_path / "body").write_bytes(BODY)
    done = cli("verify", "body", "-H", f"X-Gptimg-Signature: {sign(BODY, SECRET)}")
    assert done.returncode == 1
    assert done.stdout.startswith("refused: the signature is valid (secret #0")
    assert "the library would answer 400 invalid_headers" in done.stdout
    as_json = cli("verify", "body", "-H", f"X-Gptimg-Signature: {sign(BODY, SECRET)}", "--json")
    report = json.loads(as_json.stdout)
    assert (report["valid"], report["accepted"]) == (True, False)
    assert report["answer"]["status"] == 400 and report["answer"]["code"] == "invalid_headers"


def test_a_valid_signature_with_an_invalid_event_says_400_invalid_payload(
    cli: Run, tmp_path: Path
) -> None:
    body = b'{"event":"generation.succeeded","data":{}}'
    code, causes, report = verify(cli, tmp_path, body, sign(body, SECRET))
    assert (code, causes, report["valid"]) == (1, [], True)
    assert (report["answer"]["status"], report["answer"]["code"]) == (400, "invalid_payload")


def test_a_request_the_receiver_accepts_says_its_answer(cli: Run, tmp_path: Path) -> None:
    (tmp_path / "body").write_bytes(BODY)
    done = cli("verify", "body", *headers(sign(BODY, SECRET)))
    assert done.returncode == 0
    assert "the library would answer 200" in done.stdout


def test_explanation_is_printed_for_people(cli: Run, tmp_path: Path) -> None:
    (tmp_path / "body").write_bytes(json.dumps(json.loads(BODY)).encode())
    (tmp_path / "headers.txt").write_text(
        f"POST /hooks/gptimg HTTP/1.1\nX-Gptimg-Signature: {sign(BODY, SECRET)}\n"
    )
    done = cli("verify", "body", "--headers-file", "headers.txt")
    assert done.returncode == 1
    assert "invalid: the library would answer 401" in done.stdout
    assert (
        "cause reserialized_body: the body is JSON-equal to a correctly signed one" in done.stdout
    )
    assert "warning missing_delivery" in done.stdout


def test_missing_signature_header_is_named(cli: Run, tmp_path: Path) -> None:
    (tmp_path / "body").write_bytes(BODY)
    done = cli("verify", "body", "-H", "X-Gptimg-Event: generation.succeeded", "--json")
    assert done.returncode == 1
    assert [c["code"] for c in json.loads(done.stdout)["causes"]] == ["missing_signature"]


def test_a_configured_secret_the_receiver_refuses_fails_even_when_another_matches(
    cli: Run, tmp_path: Path
) -> None:
    env = {"GPTIMG_WEBHOOK_SECRET": f"{SECRET},plain"}
    code, causes, report = verify(cli, tmp_path, BODY, sign(BODY, SECRET), env=env)
    assert (code, causes, report["valid"], report["answer"]) == (1, ["invalid_secret"], True, None)
    assert "plain" not in report["causes"][0]["message"]
    (tmp_path / "body").write_bytes(BODY)
    done = cli("verify", "body", *headers(sign(BODY, SECRET)), env=env)
    assert done.returncode == 1 and "would refuse to start" in done.stdout
