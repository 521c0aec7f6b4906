"""Meta's shared webhook rules (WhatsApp, Messenger, Instagram): signature and handshake."""

from __future__ import annotations

import hmac
import json

import pytest
from multidict import CIMultiDict

from leadline.adapters.base import RequestRejected, SignatureInvalid, SignatureMissing
from leadline.adapters.meta import handshake, sign, verify_signature
from tests.helpers import provider_fixture

EXAMPLE = json.loads(provider_fixture("meta_signature_example.json").read_text())
RAW = provider_fixture(EXAMPLE["raw_body_file"]).read_bytes()
SECRET = EXAMPLE["app_secret"]
VERIFICATION = json.loads(provider_fixture("meta_webhook_verification_example.json").read_text())


def test_metas_own_signature_example_verifies_on_the_raw_bytes():
    verify_signature(SECRET, EXAMPLE["headers"], RAW)
    assert sign(SECRET, RAW) == EXAMPLE["headers"]["X-Hub-Signature-256"]


@pytest.mark.parametrize(
    "wrong",
    [
        "wrong_hmac_if_reserialised_with_ensure_ascii_false",
        "wrong_hmac_if_reserialised_with_python_json_dumps_defaults",
    ],
)
def test_signatures_of_a_reserialised_body_are_refused(wrong: str):
    with pytest.raises(SignatureInvalid):
        verify_signature(SECRET, {"X-Hub-Signature-256": EXAMPLE[wrong]}, RAW)


def test_a_body_parsed_and_serialised_again_no_longer_matches_its_signature():
    again = json.dumps(json.loads(RAW), ensure_ascii=False).encode()
    with pytest.raises(SignatureInvalid):
        verify_signature(SECRET, EXAMPLE["headers"], again)


@pytest.mark.parametrize(
    ("headers", "refusal"),
    [
        ({}, SignatureMissing),
        ({"X-Hub-Signature-256": ""}, SignatureMissing),
        ({"X-Hub-Signature-256": "sha1=abc"}, SignatureInvalid),
        ({"X-Hub-Signature-256": "sha256="}, SignatureInvalid),
        ({"X-Hub-Signature-256": "sha256=" + "0" * 64}, SignatureInvalid),
        ({"X-Hub-Signature-256": "sha256=\u00e4\u00f6\u00e5"}, SignatureInvalid),
    ],
)
def test_missing_or_wrong_signatures_fail_closed(headers: dict[str, str], refusal: type):
    with pytest.raises(refusal) as caught:
        verify_signature(SECRET, headers, RAW)
    assert caught.value.status == (401 if refusal is SignatureMissing else 403)
    assert SECRET not in str(caught.value)


def test_the_header_is_found_whatever_its_case():
    # The runtime hands adapters aiohttp's case-insensitive headers.
    verify_signature(SECRET, CIMultiDict({"x-hub-signature-256": sign(SECRET, RAW)}), RAW)


def test_signature_and_token_are_compared_with_compare_digest(monkeypatch: pytest.MonkeyPatch):
    """Timing cannot be measured reliably here; what is checked is that every
    comparison goes through hmac.compare_digest, which takes constant time."""
    compared: list[tuple[bytes, bytes]] = []
    real = hmac.compare_digest

    def recording(a: bytes, b: bytes) -> bool:
        compared.append((a, b))
        return real(a, b)

    monkeypatch.setattr(hmac, "compare_digest", recording)
    verify_signature(SECRET, EXAMPLE["headers"], RAW)
    handshake(VERIFICATION["request"]["query"], "example-verify-token")
    assert len(compared) == 2


def test_the_handshake_echoes_the_challenge_for_the_right_token():
    query = VERIFICATION["request"]["query"]
    expected = VERIFICATION["expected_response_when_token_matches"]
    reply = handshake(query, "example-verify-token")
    assert (reply.status, reply.body, reply.content_type) == (
        expected["status"],
        expected["body"],
        expected["content_type"],
    )


@pytest.mark.parametrize(
    ("change", "status"),
    [
        ({"hub.verify_token": "someone-else"}, 403),
        ({"hub.verify_token": ""}, 403),
        ({"hub.mode": "unsubscribe"}, 400),
        ({"hub.challenge": ""}, 400),
    ],
)
def test_the_handshake_refuses_a_wrong_token_or_request(change: dict[str, str], status: int):
    query = {**VERIFICATION["request"]["query"], **change}
    with pytest.raises(RequestRejected) as caught:
        handshake(query, "example-verify-token")
    assert caught.value.status == status
    assert "example-verify-token" not in str(caught.value)
