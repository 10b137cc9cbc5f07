"""Disk targets: find and read a kernel and initrd on the disks a machine already has
(docs/disks.md).

``bootfiles`` names the files as the distributions do; ``mounted`` reads xfs and btrfs
through the kernel's own drivers (read-only, under a deadline); ``btrfs`` finds the
members of a multi-device btrfs by fsid; ``discover`` picks the reader for a plan's disk
and runs the volume hooks (LUKS, LVM, md, ZFS) that add devices first. The ext4 reader is
``guest.agent.diskread`` (userland). Each is imported only when a disk target needs it.
"""
