"""What the host and the guest share: the wire formats and the rules both sides apply.

Plans (``plan``), OCI manifests and references (``oci``, ``ociref``), cosign payloads and
public keys (``cosign``, ``pubkey``), GPT (``gpt``), the UEFI structures (``efi``), the
architectures (``arch``) and the error types (``errors``). Pure: bytes in, bytes out; no
I/O beyond what a caller hands in. See docs/ARCHITECTURE.md.
"""
