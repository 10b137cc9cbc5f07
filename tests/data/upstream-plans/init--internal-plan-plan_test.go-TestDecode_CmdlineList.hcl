
target "alpine" {
  index = "registry.example.com/boot/alpine:3.21"
  cmdline = [
    "console=ttyS0",
    "ip=dhcp",
    "alpine_repo=https://dl-cdn.alpinelinux.org/alpine/v3.21/main",
  ]
}
