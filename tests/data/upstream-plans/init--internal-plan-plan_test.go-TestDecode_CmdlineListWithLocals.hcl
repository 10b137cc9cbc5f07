
locals {
  console = arch == "arm64" ? "ttyAMA0" : "ttyS0"
}
target "alpine" {
  index = "registry.example.com/boot/alpine:3.21"
  cmdline = [
    "console=${local.console}",
    "ip=dhcp",
  ]
}
