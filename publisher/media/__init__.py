"""Boot media builders: initramfs (cpio), UKI (PE), ESP (FAT), hybrid boot.iso, cache disk.

Each module is one format, bytes in and bytes out; ``build`` is the orchestration that
reads the kernel/ recipe, fetches inputs and writes files atomically.
"""
