# OCI-sourced targets, in the style of upstream cloud-boot's plan reference.
default_target = "primary"

dns = ["10.0.2.3"]

locals {
  registry  = "registry.example.com/boot"
  console   = arch == "arm64" ? "ttyAMA0" : "ttyS0"
  # locals may use each other, in any order
  base_args = "console=${local.console} ro"
}

# One multi-arch index serves both arches; the guest picks the manifest for its arch.
target "primary" {
  version = "6.6"
  label   = "Production Linux ${self.version}"
  index   = "${local.registry}/linux:${self.version}"
  modpack = "${local.registry}/linux-modules:${self.version}"
  cmdline = "${local.base_args} root=/dev/vda1"
}

# Arch variants share a name: the first one whose arch matches the guest wins.
target "rescue" {
  arch    = "arm64"
  kernel  = "${local.registry}/rescue-kernel:arm64"
  initrd  = "${local.registry}/rescue-initrd:latest"
  cmdline = ["console=ttyAMA0", "single", "rd.break"]
}

target "rescue" {
  arch    = "amd64"
  kernel  = "${local.registry}/rescue-kernel:amd64"
  initrd  = "${local.registry}/rescue-initrd:latest"
  cmdline = ["console=ttyS0", "single", "rd.break"]
}

# Netboot Alpine; {{.IPSpec}} is a Go template the guest fills in, not HCL.
target "alpine" {
  version = "3.21"
  index   = "${local.registry}/alpine:${self.version}"
  cmdline = [
    "console=${local.console}",
    "ip={{.IPSpec}}",
    "alpine_repo=https://dl-cdn.alpinelinux.org/alpine/v${self.version}/main",
    "modloop=${local.registry}/alpine-modloop:${self.version}",
  ]
}
