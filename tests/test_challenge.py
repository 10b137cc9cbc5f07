"""The one WWW-Authenticate parser (guest.contract.challenge), as both sides use it.

The end-to-end flows (publisher and guest, each against a bearer front offering these
headers) are in test_registry.py and test_guest_fetch.py.
"""

from __future__ import annotations

import pytest

from guest.contract.challenge import Challenge, parse_challenge, parse_challenges

DOCKER = (
    'Bearer realm="https://auth.example/token",service="registry.example",'
    'scope="repository:me/plan:pull,push"'
)


def test_docker_token_challenge() -> None:
    assert parse_challenges(DOCKER) == [
        Challenge(
            "bearer",
            {
                "realm": "https://auth.example/token",
                "service": "registry.example",
                "scope": "repository:me/plan:pull,push",  # the comma is inside the quotes
            },
        )
    ]


@pytest.mark.parametrize(
    ("header", "params"),
    [
        ("Bearer realm=https://a/t,service=reg", {"realm": "https://a/t", "service": "reg"}),
        ('Bearer  realm = "https://a/t" , service=reg', {"realm": "https://a/t", "service": "reg"}),
        ('Bearer Realm="x",SCOPE="a,b,c"', {"realm": "x", "scope": "a,b,c"}),
        (r'Bearer realm="say \"hi\"",x-y="a\\b"', {"realm": 'say "hi"', "x-y": "a\\b"}),
        ('Bearer realm=""', {"realm": ""}),
    ],
    ids=["bare", "spaces", "case", "escapes", "empty"],
)
def test_quoted_and_unquoted_values(header: str, params: dict[str, str]) -> None:
    assert parse_challenge(header) == Challenge("bearer", params)


def test_several_schemes_in_one_header() -> None:
    header = 'Basic realm="legacy", Bearer realm="https://a/t",scope="repository:x:pull,push"'
    assert parse_challenges(header) == [
        Challenge("basic", {"realm": "legacy"}),
        Challenge("bearer", {"realm": "https://a/t", "scope": "repository:x:pull,push"}),
    ]
    # Bearer is answered when offered: it works with credentials and without
    assert parse_challenge(header).scheme == "bearer"
    assert parse_challenge('Basic realm="r"') == Challenge("basic", {"realm": "r"})
    assert parse_challenge('Negotiate, Basic realm="r"').scheme == "basic"


@pytest.mark.parametrize("header", ["", "   ", ",", '="x"', "\u00e9"])
def test_garbage_is_no_challenge(header: str) -> None:
    assert parse_challenges(header) == []
    assert parse_challenge(header) == Challenge("")
