
locals {
  flavor = arch == "arm64" ? "boot/arm" : "boot/x86"
}
target "auto" {
  index   = "registry.example.com/${local.flavor}/linux:6.6"
  cmdline = "console=ttyS0"
}
