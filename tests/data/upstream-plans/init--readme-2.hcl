target "alpine" {
  version = "3.21"
  index   = "registry/alpine:${self.version}"
  cmdline = [
    "console=ttyS0",
    "ip={{.IPSpec}}",
    "alpine_repo=https://dl-cdn.alpinelinux.org/alpine/v${self.version}/main",
  ]
}
