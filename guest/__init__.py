"""The guest side of cloudboot and the contract both sides share.

Everything here must run inside the initramfs on Debian bookworm's Python 3.11 with only
the pure-Python dependencies we pack (python-hcl2/lark, ext4), so nothing in this package
may import from ``publisher`` or ``watcher``.
"""
