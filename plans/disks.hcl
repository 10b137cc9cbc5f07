# Chain into distributions already installed on local disks (both spellings of disk).
default_target = "debian"

locals {
  console = arch == "arm64" ? "ttyAMA0" : "ttyS0"
}

target "debian" {
  label = "Debian 13 (ext4, newest kernel in /boot)"
  disk {
    device = "PARTLABEL=debian-root"
  }
  cmdline = ["console=${local.console}", "root=PARTLABEL=debian-root", "ro", "quiet"]
}

target "alma" {
  arch  = "amd64"
  label = "AlmaLinux 9 on XFS"
  disk = {
    device = "/dev/vda2"
    fs     = "xfs"
    kernel = "/boot/vmlinuz-5.14.0-503.el9_5.x86_64"
    initrd = "/boot/initramfs-5.14.0-503.el9_5.x86_64.img"
  }
  cmdline = "console=ttyS0 ro root=UUID=0b7c2b7e-5d7a-4f3e-9f6e-1d2c3b4a5968"
}

target "proxmox" {
  label = "Proxmox VE on ZFS"
  disk = {
    device          = "/dev/vda3"
    fs              = "zfs"
    dataset         = "rpool/ROOT/pve-1"
    kernel          = "/boot/vmlinuz-6.5.13-1-pve"
    initrd          = "/boot/initrd.img-6.5.13-1-pve"
    luks-passphrase = "${meta.cloudboot.luks_passphrase}"
  }
  cmdline = "root=ZFS=rpool/ROOT/pve-1 boot=zfs console=${local.console}"
}

target "fedora" {
  label = "Fedora on btrfs"
  disk {
    device = "UUID=3f1c9e2a-7b4d-4c8e-a1f0-2d5e6b7c8d9e"
    fs     = "btrfs"
  }
  cmdline = ["console=${local.console}", "rootflags=subvol=root", null, ""]
}
