"""OCI pulls in the guest, over ``guest.agent.httpclient`` (docs/wire-formats.md §2, §3).

Anonymous, Basic and bearer-token registries: a 401 answer's ``WWW-Authenticate``
challenge says which; a bearer token is fetched from the realm (with Basic credentials
when we have them) and cached per repository scope. Every blob is hashed while it streams
and refused if it is not the digest the manifest pinned; manifests fetched by tag are
pinned by their own digest from then on. Credentials travel only in unredirected headers
(a blob redirect to object storage must not carry them) and never appear in errors.
"""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING
from urllib.parse import urlencode

from guest.agent import httpclient, srv as srvmod
from guest.contract import oci
from guest.contract.challenge import parse_challenge
from guest.contract.errors import CloudbootError

if TYPE_CHECKING:
    import ssl

CHUNK = 1 << 20
MAX_MANIFEST = 4 << 20


class FetchError(CloudbootError):
    pass


class NotFoundError(FetchError):
    pass


class CredentialsError(FetchError):
    """The registry wants credentials we do not have, or refused the ones we sent."""


@dataclass(frozen=True)
class Credentials:
    """A registry login for basic auth or a token exchange; never printed."""

    username: str
    password: str

    def __repr__(self) -> str:  # never print a password, not even in a traceback
        return f"Credentials(username={self.username!r}, password=***)"


@dataclass(frozen=True)
class Resolved:
    """A manifest pinned by digest; ``top_digest`` is what was tagged (what cosign signs)."""

    ref: oci.Ref
    top_digest: str
    manifest: oci.Manifest
    manifest_digest: str


#: Statuses another replica may answer differently (upstream's list): failover, then retry.
RETRY_STATUSES = frozenset({408, 429}) | frozenset(range(500, 600))
#: Rounds over an SRV name's replicas, and the pause before round n (n * RETRY_PAUSE).
SRV_ROUNDS = 3
RETRY_PAUSE = 1.0


class _Retry(Exception):
    """A failure another replica (or a later round) may not have; ``str`` is for errors."""


class RegistryClient:
    """A minimal distribution-spec reader: manifests and blobs, with auth and digests.

    ``default_credentials`` (``rd.cloudboot.user``/``pass``) answer a challenge from any
    registry without an entry in ``credentials``, as upstream's do. ``srv`` resolves
    ``_oci._tcp.<domain>`` registries to replicas (``guest.agent.srv``); without it such a
    name is an ordinary host name.
    """

    def __init__(
        self,
        *,
        insecure: bool = False,
        credentials: Mapping[str, Credentials] | None = None,
        timeout: float = 30.0,
        ssl_context: ssl.SSLContext | None = None,
        force_tls: bool = False,
        default_credentials: Credentials | None = None,
        srv: srvmod.Resolver | None = None,
        pause: Callable[[float], None] = time.sleep,
        warn: Callable[[str], None] | None = None,
    ) -> None:
        self.insecure = insecure
        self.force_tls = force_tls
        self.credentials = dict(credentials or {})
        self.default_credentials = default_credentials
        self.timeout = timeout
        self.ssl_context = ssl_context
        self.srv = srv
        self.pause = pause
        self.warn = warn or (lambda _message: None)
        #: (endpoint host, scope) -> Authorization: a token per SRV target, since each
        #: replica may run its own token service
        self._tokens: dict[tuple[str, str], str] = {}

    def _url(self, ref: oci.Ref, endpoint: srvmod.Endpoint, path: str) -> str:
        plain = not self.force_tls and (self.insecure or ref.insecure_default)
        scheme = "http" if plain else "https"
        return f"{scheme}://{endpoint.host}/v2/{ref.repository}{path}"

    def _endpoints(self, ref: oci.Ref) -> list[srvmod.Endpoint]:
        if self.srv is not None and srvmod.is_srv_name(ref.registry):
            try:
                return self.srv.endpoints(ref.registry)
            except CloudbootError as exc:
                raise FetchError(exc.message, where=str(ref)) from None
        return [srvmod.Endpoint(ref.registry)]

    def _open(self, ref: oci.Ref, path: str, accept: str | None) -> httpclient.Response:
        """Send to the registry, or to each SRV replica in order until one answers.

        A literal host gets one try (its errors are final, as before SRV existed); an SRV
        name's replicas are tried in RFC 2782 order, moving on after a network error or a
        status in ``RETRY_STATUSES``, for ``SRV_ROUNDS`` rounds with growing pauses.
        """
        endpoints = self._endpoints(ref)
        is_srv = len(endpoints) > 1 or endpoints[0].host != ref.registry
        failures: list[str] = []
        for round_no in range(SRV_ROUNDS if is_srv else 1):
            if round_no:
                self.pause(RETRY_PAUSE * round_no)
            for endpoint in endpoints:
                try:
                    return self._open_one(ref, endpoint, path, accept)
                except _Retry as exc:
                    if not is_srv:
                        raise FetchError(str(exc), where=str(ref)) from None
                    failures.append(str(exc))
                    self.warn(f"{ref.registry}: {exc}; trying the next replica")
                    if self.srv is not None:
                        self.srv.demote(ref.registry, endpoint)
        tried = "; ".join(failures[-len(endpoints) :])
        raise FetchError(
            f"no replica of {ref.registry} answered after {SRV_ROUNDS} rounds: {tried}",
            where=str(ref),
        )

    def _open_one(
        self, ref: oci.Ref, endpoint: srvmod.Endpoint, path: str, accept: str | None
    ) -> httpclient.Response:
        scope = f"repository:{ref.repository}:pull"
        headers = {"Accept": accept} if accept else {}
        url = self._url(ref, endpoint, path)
        connect = _connect(endpoint)
        for attempt in range(2):
            auth = self._tokens.get((endpoint.host, scope))
            try:
                resp = httpclient.get(
                    url,
                    headers,
                    private={"Authorization": auth} if auth else None,
                    timeout=self.timeout,
                    ssl_context=self.ssl_context,
                    connect=connect,
                )
            except OSError as exc:
                raise _Retry(f"cannot reach {endpoint.host}: {exc.strerror or exc}") from None
            if resp.status < 400:
                return resp
            resp.close()
            if resp.status == 401 and attempt == 0:
                self._answer_challenge(ref, endpoint, resp.header("www-authenticate") or "", scope)
                continue
            if resp.status in RETRY_STATUSES:
                shown = httpclient.redact_url(url)
                raise _Retry(f"HTTP {resp.status} {resp.reason} for {shown}")
            if resp.status == 404:
                raise NotFoundError(
                    f"not found (HTTP 404): {httpclient.redact_url(url)}", where=str(ref)
                )
            if resp.status != 401:
                raise FetchError(
                    f"HTTP {resp.status} {resp.reason} for {httpclient.redact_url(url)}",
                    where=str(ref),
                )
        raise CredentialsError(
            f"registry {endpoint.host} refused our credentials for {scope}", where=str(ref)
        )

    def _creds(self, ref: oci.Ref, endpoint: srvmod.Endpoint) -> Credentials | None:
        return (
            self.credentials.get(ref.registry)
            or self.credentials.get(endpoint.host)
            or self.default_credentials
        )

    def _answer_challenge(
        self, ref: oci.Ref, endpoint: srvmod.Endpoint, header: str, scope: str
    ) -> None:
        challenge = parse_challenge(header)
        kind, params = challenge.scheme, challenge.params
        creds = self._creds(ref, endpoint)
        if kind == "basic":
            if not creds:
                raise CredentialsError(
                    f"registry {endpoint.host} wants Basic credentials and none were given",
                    where=str(ref),
                )
            self._tokens[(endpoint.host, scope)] = "Basic " + _basic(creds)
            return
        if kind != "bearer" or "realm" not in params:
            raise FetchError(f"unsupported auth challenge {kind!r}", where=str(ref))
        query = {"scope": params.get("scope", scope)}
        if "service" in params:
            query["service"] = params["service"]
        url = params["realm"] + ("&" if "?" in params["realm"] else "?") + urlencode(query)
        private = {"Authorization": "Basic " + _basic(creds)} if creds else None
        try:
            with httpclient.get(
                url,
                private=private,
                timeout=self.timeout,
                ssl_context=self.ssl_context,
                connect=_connect(endpoint),  # a realm on the SRV target itself
            ) as resp:
                if resp.status != 200:
                    raise FetchError(
                        f"token server answered HTTP {resp.status} for {scope}", where=str(ref)
                    )
                answer = json.loads(resp.read(1 << 20))
        except (OSError, ValueError) as exc:
            raise FetchError(
                f"token server {httpclient.redact_url(params['realm'])} failed: {exc}",
                where=str(ref),
            ) from None
        token = (
            answer.get("token") or answer.get("access_token") if isinstance(answer, dict) else None
        )
        if not isinstance(token, str) or not token:
            raise FetchError("token server answered without a token", where=str(ref))
        self._tokens[(endpoint.host, scope)] = "Bearer " + token

    def manifest(self, ref: oci.Ref) -> tuple[bytes, str, str]:
        """(bytes, media type, digest); a ref with a digest must match it."""
        with self._open(ref, f"/manifests/{ref.reference}", oci.MANIFEST_ACCEPT) as resp:
            data = resp.read(MAX_MANIFEST + 1)
            header_type = resp.header("content-type")
        if len(data) > MAX_MANIFEST:
            raise FetchError(f"manifest larger than {MAX_MANIFEST} bytes", where=str(ref))
        digest = oci.digest_of(data)
        if ref.digest:
            oci.verify_digest(data, ref.digest, what=f"manifest {ref}")
        return data, oci.media_type_of(data, header_type), digest

    def blob(
        self,
        ref: oci.Ref,
        desc: oci.Descriptor,
        sink: Callable[[bytes], None] | None = None,
        *,
        limit: int,
    ) -> bytes:
        """A blob's bytes, hashed while streaming and checked against ``desc``.

        ``desc.size`` is held against ``limit`` before the request: the memory a blob may
        take is ours to bound, not the (maybe unverified) manifest's.
        """
        if desc.size > limit:
            raise FetchError(
                f"blob {desc.digest} announces {desc.size} bytes, more than {limit}",
                where=str(ref),
            )
        verifier = oci.DigestVerifier(desc.digest, what=f"blob {desc.digest} of {ref}")
        out = bytearray()
        with self._open(ref, f"/blobs/{desc.digest}", None) as resp:
            while chunk := resp.read(CHUNK):
                verifier.update(chunk)
                out += chunk
                if sink:
                    sink(chunk)
                if len(out) > desc.size:
                    break
        if len(out) != desc.size:
            raise FetchError(
                f"blob {desc.digest}: got {len(out)} bytes, manifest says {desc.size}",
                where=str(ref),
            )
        verifier.check()
        return bytes(out)

    def blob_url(self, ref: oci.Ref, digest: str) -> str:
        """Where the blob is served: what a target's own init fetches (a modloop). For an
        SRV name, the replica the registry client prefers now (the target has no SRV)."""
        return self._url(ref, self._endpoints(ref)[0], f"/blobs/{digest}")

    def resolve(self, ref: oci.Ref, architecture: str) -> Resolved:
        """The manifest for linux/<architecture>, going through an index when there is one."""
        data, media_type, digest = self.manifest(ref)
        top = digest
        if oci.is_index_media_type(media_type):
            entry = oci.Index.from_bytes(data, what=f"index {ref}").resolve(architecture)
            pinned = ref.with_digest(entry.digest)
            data, media_type, digest = self.manifest(pinned)
        manifest = oci.Manifest.from_bytes(data, what=f"manifest {ref}")
        return Resolved(ref, top, manifest, digest)


def _connect(endpoint: srvmod.Endpoint) -> dict[str, str] | None:
    """Dial an SRV target's resolved address for its name (only that name)."""
    if endpoint.address is None:
        return None
    return {endpoint.host.rsplit(":", 1)[0]: endpoint.address}


def _basic(creds: Credentials) -> str:
    return base64.b64encode(f"{creds.username}:{creds.password}".encode()).decode()
