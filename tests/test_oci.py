"""guest.contract.oci: refs, canonical manifests, platform resolution, layer lookup."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, strategies as st

from guest.contract.errors import FormatError
from guest.contract.oci import (
    ANNOTATION_TITLE,
    MEDIA_CONFIG,
    MEDIA_INDEX,
    MEDIA_KERNEL,
    MEDIA_MANIFEST,
    MEDIA_PLAN,
    Descriptor,
    DigestMismatchError,
    DigestVerifier,
    Index,
    LayerRole,
    Manifest,
    NoLayerError,
    NoMatchingPlatformError,
    Platform,
    RefError,
    artifact_manifest,
    digest_of,
    parse_ref,
    plan_manifest,
)

HEX = "ab" * 32


@pytest.mark.parametrize(
    ("text", "registry", "repository", "tag", "digest"),
    [
        ("oci://ghcr.io/me/cloud-plan:prod", "ghcr.io", "me/cloud-plan", "prod", None),
        ("127.0.0.1:5000/me/plan", "127.0.0.1:5000", "me/plan", "latest", None),
        (f"localhost:5000/plan@sha256:{HEX}", "localhost:5000", "plan", None, f"sha256:{HEX}"),
        (f"r.io/a/b:v1@sha256:{HEX}", "r.io", "a/b", "v1", f"sha256:{HEX}"),
        ("[::1]:5000/x/y:t", "[::1]:5000", "x/y", "t", None),
    ],
)
def test_parse_ref(text: str, registry: str, repository: str, tag: str, digest: str) -> None:
    ref = parse_ref(text)
    assert (ref.registry, ref.repository, ref.tag, ref.digest) == (
        registry,
        repository,
        tag,
        digest,
    )
    assert parse_ref(str(ref)) == ref
    assert ref.reference == (digest or tag)


@pytest.mark.parametrize(
    ("text", "loopback"),
    [
        ("localhost/p", True),
        ("localhost:5000/p", True),
        ("127.0.0.1:5000/p", True),
        ("127.9.9.9/p", True),
        ("[::1]:5000/p", True),
        ("ghcr.io/p", False),
        ("10.0.2.2:5000/p", False),
        ("localhost.example.com/p", False),
    ],
)
def test_loopback_means_plain_http(text: str, loopback: bool) -> None:
    assert parse_ref(text).insecure_default is loopback


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("plan", "no default registry"),
        ("r.io/Me/plan", "lowercase"),
        ("r.io/me/plan:bad tag", "tag"),
        ("r.io/me/plan@sha256:abc", "digest"),
        ("r.io/me//plan", "component"),
        ("bad_host!/me", "host"),
    ],
)
def test_parse_ref_errors_name_the_ref(text: str, fragment: str) -> None:
    with pytest.raises(RefError) as info:
        parse_ref(text)
    assert repr(text) in str(info.value)
    assert fragment in str(info.value)


@given(
    repo=st.from_regex(r"[a-z0-9]{1,8}(/[a-z0-9]{1,8}){0,2}", fullmatch=True),
    tag=st.from_regex(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,20}", fullmatch=True),
    port=st.integers(1, 65535),
)
def test_ref_round_trip(repo: str, tag: str, port: int) -> None:
    ref = parse_ref(f"oci://host.example:{port}/{repo}:{tag}")
    assert parse_ref(str(ref)) == ref
    assert ref.name == f"host.example:{port}/{repo}"


def test_plan_manifest_matches_spec_bytes() -> None:
    plan = b'default_target = "a"\n'
    manifest, config = plan_manifest(plan, "demo.hcl")
    assert config == b'{"created":null}'
    expected = (
        '{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json",'
        f'"config":{{"mediaType":"{MEDIA_CONFIG}","digest":"{digest_of(config)}","size":16}},'
        f'"layers":[{{"mediaType":"{MEDIA_PLAN}","digest":"{digest_of(plan)}","size":{len(plan)},'
        '"annotations":{"org.opencontainers.image.title":"demo.hcl"}}]}'
    ).encode()
    assert bytes(manifest) == expected
    assert manifest.digest == digest_of(expected)
    assert Manifest.from_bytes(expected) == manifest
    assert bytes(Manifest.from_bytes(expected)) == expected


def test_artifact_manifest_orders_layers_and_titles() -> None:
    k = Descriptor.for_bytes("x", b"kernel")
    c = Descriptor.for_bytes("x", b"quiet")
    i = Descriptor.for_bytes("x", b"initrd")
    manifest, config = artifact_manifest(
        "arm64", {LayerRole.CMDLINE: c, LayerRole.INITRD: i, LayerRole.KERNEL: k}
    )
    assert json.loads(config) == {"architecture": "arm64", "created": None, "os": "linux"}
    assert [(x.media_type.rsplit(".", 2)[-2], x.title) for x in manifest.layers] == [
        ("kernel", "vmlinuz"),
        ("initrd", "initrd"),
        ("cmdline", "cmdline"),
    ]
    assert manifest.layer(LayerRole.CMDLINE).digest == c.digest
    assert manifest.find_layer(LayerRole.MODULES) is None


def test_first_plan_layer_wins_and_titles_identify_generic_layers() -> None:
    def layer(media: str, data: bytes, title: str | None = None) -> Descriptor:
        return Descriptor.for_bytes(media, data, {ANNOTATION_TITLE: title} if title else None)

    cfg = Descriptor.for_bytes(MEDIA_CONFIG, b"{}")
    m = Manifest(cfg, (layer(MEDIA_KERNEL, b"k"), layer(MEDIA_PLAN, b"1"), layer(MEDIA_PLAN, b"2")))
    assert m.plan_layer().digest == digest_of(b"1")
    generic = Manifest(cfg, (layer("application/octet-stream", b"p", "site.hcl"),))
    assert generic.plan_layer().digest == digest_of(b"p")
    with pytest.raises(NoLayerError, match="no plan layer"):
        Manifest(cfg, (layer(MEDIA_KERNEL, b"k"),)).plan_layer()


def test_index_resolution_first_match_and_error() -> None:
    def entry(arch: str, data: bytes, os: str = "linux") -> Descriptor:
        return Descriptor(MEDIA_MANIFEST, digest_of(data), len(data), platform=Platform(arch, os))

    index = Index((entry("arm64", b"w", "windows"), entry("arm64", b"a"), entry("arm64", b"b")))
    data = bytes(index)
    assert json.loads(data)["mediaType"] == MEDIA_INDEX
    assert Index.from_bytes(data) == index
    assert index.resolve("arm64").digest == digest_of(b"a")
    with pytest.raises(NoMatchingPlatformError, match=r"linux/amd64.*offers: windows/arm64"):
        index.resolve("amd64")


@pytest.mark.parametrize(
    ("data", "fragment"),
    [
        (b"{not json", "not JSON"),
        (b"[]", "not a JSON object"),
        (b'{"schemaVersion":1}', "schemaVersion"),
        (b'{"schemaVersion":2,"mediaType":"text/plain"}', "mediaType"),
        (b'{"schemaVersion":2,"config":{"mediaType":"a","size":1}}', "digest"),
        (
            b'{"schemaVersion":2,"config":{"mediaType":"a","size":-1,"digest":"sha256:'
            + b"0" * 64
            + b'"}}',
            "size",
        ),
    ],
)
def test_manifest_parse_errors(data: bytes, fragment: str) -> None:
    with pytest.raises(FormatError, match=fragment):
        Manifest.from_bytes(data)


def test_streaming_digest_verification() -> None:
    data = b"x" * 100_000
    ok = DigestVerifier(digest_of(data), what="kernel")
    for i in range(0, len(data), 4096):
        ok.update(data[i : i + 4096])
    ok.check()
    bad = DigestVerifier(digest_of(data), what="kernel")
    bad.update(data[:-1] + b"y")
    with pytest.raises(DigestMismatchError, match="kernel: content digest"):
        bad.check()
