"""Our signatures remembered by the digest of the signature manifest that holds them.

Deciding whether an unchanged plan needs a new signature takes what our freshest
signature for its digest says (its pins and version, docs/trust-model.md). Reading that
from the registry is a manifest GET, a payload blob GET and an ECDSA verification per
plan: for a fleet of a thousand unchanged plans, most of a ``cloudboot publish``.

A signature manifest is content-addressed, so once we have read (or written) the one at
digest ``X`` and found our valid signature in it, ``X`` says the same forever. A publish
then HEADs the signature tag and, when it still holds ``X``, takes the remembered payload
instead of reading it again. What the memory cannot answer (a new digest, a signature
that must be replaced and so needs the foreign ones too) is read in full as before.

Trusting the HEAD's digest adds nothing a registry could not do anyway: a registry that
lies about it can only make us skip a signature a guest then fails to find, which it can
achieve by serving nothing at all.
"""

from __future__ import annotations

import hashlib
import os
import threading
from pathlib import Path

from guest.contract import cosign
from guest.contract.errors import CloudbootError
from guest.contract.oci import Ref
from publisher.registry import RegistryClient
from publisher.signing import SigningKey
from publisher.sigtag import Signatures

MEMORY_NAME = "signatures"
#: Bounds on the file: entries, and one entry's line (digest, key, payload JSON).
MAX_ENTRIES = 200_000
MAX_LINE = 64 * 1024


class SignatureMemory:
    """``{signature manifest digest: our freshest payload in it}`` for one signing key.

    Saved with only the entries used by this run (recalled or learned), so the file
    holds about one line per published plan and does not grow with every signature.
    """

    def __init__(self, path: Path | None, key: SigningKey) -> None:
        self.path = path
        self.key_id = hashlib.sha256(key.public_pem).hexdigest()
        self._known: dict[str, bytes] = {}
        self._used: dict[str, bytes] = {}
        self._loaded: dict[str, bytes] = {}
        self._lock = threading.Lock()
        if path is None:
            return
        try:
            lines = path.read_text().splitlines()[:MAX_ENTRIES]
        except (OSError, UnicodeDecodeError):
            lines = []
        for line in lines:
            fields = line.split("\t")
            if len(fields) == 3 and fields[1] == self.key_id and len(line) <= MAX_LINE:
                self._known[fields[0]] = fields[2].encode()
        self._loaded = dict(self._known)

    def recall(self, sig_digest: str, digest: str) -> cosign.SignedPayload | None:
        """Our freshest payload for ``digest`` in the signature manifest ``sig_digest``."""
        with self._lock:
            data = self._known.get(sig_digest)
        if data is None:
            return None
        try:
            signed = cosign.parse_payload(data)
        except CloudbootError:
            return None
        if signed.manifest_digest != digest:
            return None
        with self._lock:
            self._used[sig_digest] = data
        return signed

    def learn(self, sig_digest: str, signed: cosign.SignedPayload) -> None:
        """Remember ``signed`` (verified ours, or just written by us) as in ``sig_digest``."""
        data = cosign.payload(signed.docker_reference, signed.manifest_digest, signed.optional)
        with self._lock:
            self._known[sig_digest] = self._used[sig_digest] = data

    def save(self) -> None:
        """Rewrite the file when this run used other entries than it held."""
        if self.path is None or self._used == self._loaded:
            return
        with self._lock:
            lines = [f"{d}\t{self.key_id}\t{p.decode()}\n" for d, p in sorted(self._used.items())]
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        tmp.write_text("".join(lines[:MAX_ENTRIES]))
        tmp.replace(self.path)


def remembered_signatures(
    client: RegistryClient, ref: Ref, digest: str, memory: SignatureMemory
) -> Signatures | None:
    """What our signatures for ``digest`` say, from one HEAD of the signature tag.

    ``Signatures`` with ``complete=False`` (the foreign ones are not read) when the
    memory knows the manifest the tag holds, empty when there is no signature tag, and
    None when only a full read can tell.
    """
    sig_ref = ref.with_tag(cosign.signature_tag(digest))
    info = client.head_manifest(sig_ref)
    if info is None:
        return Signatures((), ())
    signed = memory.recall(info.digest, digest)
    return None if signed is None else Signatures((signed,), (), complete=False)


def learn_signatures(
    client: RegistryClient, ref: Ref, digest: str, found: Signatures, memory: SignatureMemory
) -> None:
    """After a full read or a new signature: remember what the tag now holds."""
    sig_digest = client.memory.tag(ref.with_tag(cosign.signature_tag(digest)))
    freshest = found.freshest
    if sig_digest is not None and freshest is not None:
        memory.learn(sig_digest, freshest)
