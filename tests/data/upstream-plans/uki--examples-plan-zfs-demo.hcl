// Example plan for chaining an existing ZFS-rooted Linux install
// (typical: Proxmox VE / Ubuntu Server ZSYS) via cloud-boot.

default_target = "proxmox-installed"

locals {
  console = "ttyAMA0"
}

# Proxmox VE on the default ZFS layout. The installer creates
# rpool/ROOT/pve-1 as the root dataset, with /boot inside that
# same dataset.
target "proxmox-installed" {
  label   = "Proxmox VE (existing install, rpool/ROOT/pve-1)"
  disk {
    device = "rpool/ROOT/pve-1"
    fs     = "zfs"
    kernel = "/boot/vmlinuz-pve"   # symlink to the latest
    initrd = "/boot/initrd.img-pve"
  }
  cmdline = "root=ZFS=rpool/ROOT/pve-1 boot=zfs console=${local.console} ro"
}

# Ubuntu Server with the installer's ZSYS layout — root on rpool,
# /boot on bpool (a separate pool with a GRUB-compatible feature
# subset).
target "ubuntu-zsys" {
  label   = "Ubuntu Server (ZSYS install, rpool + bpool)"
  disk {
    device = "rpool/ROOT/ubuntu_xxxxxx"
    fs     = "zfs"
    kernel = "/boot/vmlinuz"      # provided by bpool, symlinked into rpool's /boot/efi/... layout
    initrd = "/boot/initrd.img"
  }
  cmdline = "root=ZFS=rpool/ROOT/ubuntu_xxxxxx console=${local.console} ro"
}
