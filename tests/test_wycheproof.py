"""Project Wycheproof vectors against the guest's pure-Python signature verifiers.

1,411 vectors (tests/data/wycheproof/README.md): no valid signature may be rejected and
no invalid one accepted. The "acceptable" RSA vectors (a DigestInfo without the NULL
parameter) are refused on purpose, as cosign's Go verifier refuses them.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from guest.contract.errors import FormatError
from guest.contract.pubkey import PublicKey, _der_sequence, public_key_from_spki

DATA = Path(__file__).parent / "data" / "wycheproof"
FILES = {
    "ecdsa_secp256r1_sha256_test.json": 484,
    "ed25519_test.json": 151,
    "rsa_signature_2048_sha256_test.json": 259,
    "rsa_signature_3072_sha256_test.json": 259,
    "rsa_signature_4096_sha256_test.json": 258,
}


def _vectors(name: str) -> Iterator[tuple[dict[str, Any], dict[str, Any]]]:
    doc = json.loads((DATA / name).read_text())
    for group in doc["testGroups"]:
        for test in group["tests"]:
            yield group, test


def _answer(key: PublicKey, test: dict[str, Any]) -> bool:
    return key.verify(bytes.fromhex(test["msg"]), bytes.fromhex(test["sig"]))


@pytest.mark.parametrize("name", sorted(FILES))
def test_every_vector_is_answered_right(name: str) -> None:
    wrong: list[str] = []
    counts = {"valid": 0, "invalid": 0, "acceptable": 0}
    keys: dict[str, PublicKey] = {}
    for group, test in _vectors(name):
        der = group["publicKeyDer"]
        if der not in keys:
            keys[der] = public_key_from_spki(bytes.fromhex(der))
        result = test["result"]
        counts[result] += 1
        accepted = _answer(keys[der], test)
        expected = result == "valid"  # "acceptable": refused, see the module docstring
        if accepted != expected:
            wrong.append(f"tcId {test['tcId']} ({result}, {test['comment']}): got {accepted}")
    assert sum(counts.values()) == FILES[name]
    assert counts["valid"] and counts["invalid"]
    assert not wrong, "\n".join(wrong)


def test_the_acceptable_vectors_are_the_missing_null_ones() -> None:
    """What "acceptable" covers here, so a new kind in a data update is looked at."""
    comments = {
        test["comment"]
        for name in FILES
        for _group, test in _vectors(name)
        if test["result"] == "acceptable"
    }
    assert comments == {"Missing NULL in the ASN encoding"}


def test_non_minimal_der_is_refused_with_the_offset() -> None:
    """The BER forms the old parser took: a long-form length for a short value."""
    ber = bytes.fromhex("30 81 06 02 01 01 02 01 01".replace(" ", ""))
    with pytest.raises(FormatError, match="non-minimal DER length"):
        _der_sequence(ber, "ECDSA signature")
