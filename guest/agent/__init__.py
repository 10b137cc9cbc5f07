"""What only PID 1 runs: the boot agent inside the UKI's initramfs.

``main`` drives one pass (network, fetch, verify, pick, stage, NVRAM, reboot); the other
modules are its parts: the registry client (``fetch``, ``httpclient``), disks
(``blockdev``, ``diskread``), staging on the cache ESP (``stage``, ``secureboot``), the
console and menu, DHCP leases, metadata and the kernel command line. Builds on
``guest.contract`` only.
"""
