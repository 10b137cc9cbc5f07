// Test plan for the local QEMU smoke run (long comments shortened).

default_target = "alpine"

menu {
  timeout = "5s"
  prompt  = "cloud-boot QEMU test — pick a target"
}

# Shared registry base (the QEMU NAT host).
locals {
  registry    = "10.0.2.2:5000/boot"
  alpine_repo = "https://dl-cdn.alpinelinux.org/alpine"
  # Per-arch serial console name.
  console     = arch == "arm64" ? "ttyAMA0" : "ttyS0"
}

# Alpine netboot smoke target.
target "alpine" {
  # `version` is exposed as `self.version`.
  version = "3.21"
  label   = "Alpine ${self.version} netboot (smoke test)"
  index   = "${local.registry}/alpine:${self.version}"
  # cmdline can be a string or a list of strings joined with spaces.
  cmdline = [
    "console=${local.console}",
    # `quiet` hides dmesg chatter.
    "quiet",
    "ip={{.IPSpec}}",
    "alpine_repo=${local.alpine_repo}/v${self.version}/main",
  ]
}

# Same artifact as `alpine`, with the kernel chatter unmuted.
target "alpine-debug" {
  version = "3.21"
  label   = "Alpine ${self.version} netboot (debug)"
  index   = "${local.registry}/alpine:${self.version}"
  cmdline = [
    "console=${local.console}",
    "ip={{.IPSpec}}",
    "alpine_repo=${local.alpine_repo}/v${self.version}/main",
    # KOPT_debug_init triggers `set -x` in Alpine's /init script.
    "debug_init=yes",
  ]
}

# Debian 13 (Trixie) netboot installer.
target "debian" {
  version = "13"
  label   = "Debian ${self.version} netboot installer"
  index   = "${local.registry}/debian:${self.version}"
  cmdline = [
    "console=${local.console},115200n8",
    "ip={{.IPSpec}}",
  ]
}

# Debian 13 generic-cloud image booted in DISK MODE.
target "debian-cloud" {
  version = "13"
  label   = "Debian ${self.version} cloud image + cloud-init"
  # device = "LABEL=cloudimg-rootfs" is resolved by scanning ext4 superblocks.
  cmdline = "console=${local.console},115200n8 root=LABEL=cloudimg-rootfs ro"
  disk {
    device = "LABEL=cloudimg-rootfs"
    fs     = "ext4"
  }
}

target "primary" {
  label   = "Production Linux 6.6 (OCI)"
  index   = "${local.registry}/linux:6.6"
  cmdline = "console=${local.console}"
}

target "rescue" {
  label   = "Rescue shell (rd.break)"
  index   = "${local.registry}/rescue:latest"
  cmdline = "console=${local.console} single rd.break"
}

target "from-disk" {
  label   = "Boot kernel from /dev/vda2"
  cmdline = "console=${local.console} ro root=/dev/vda2"
  disk {
    device = "/dev/vda2"
    fs     = "ext4"
  }
}
