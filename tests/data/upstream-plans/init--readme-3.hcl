locals {
  registry    = "_oci._tcp.registry.example.com/boot"
  alpine_repo = "https://dl-cdn.alpinelinux.org/alpine"
  console     = arch == "arm64" ? "ttyAMA0" : "ttyS0"   # locals see `arch`
}

target "alpine" {
  version = "3.21"
  label   = "Alpine ${self.version}"
  index   = "${local.registry}/alpine:${self.version}"
  cmdline = [
    "console=${local.console}",
    "ip={{.IPSpec}}",
    "alpine_repo=${local.alpine_repo}/v${self.version}/main",
  ]
}
