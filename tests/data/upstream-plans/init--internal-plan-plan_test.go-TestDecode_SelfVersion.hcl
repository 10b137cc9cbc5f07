
locals {
  alpine_repo = "https://dl-cdn.alpinelinux.org/alpine"
}
target "alpine" {
  version = "v3.21"
  index   = "registry.example.com/boot/alpine:${self.version}"
  label   = "Alpine ${self.version} (${self.name})"
  cmdline = [
    "console=ttyS0",
    "alpine_repo=${local.alpine_repo}/${self.version}/main",
  ]
}
