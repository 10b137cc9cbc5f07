"""The guest side of cloudboot and the contract both sides share.

Everything here must run inside the initramfs on Debian bookworm's Python 3.11 with only
the pure-Python dependencies we pack (ext4 and its own), so nothing in this package
may import from ``publisher`` or ``watcher``.
"""
