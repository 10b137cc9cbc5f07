
locals {
  base = "_oci._tcp.registry.example.com/boot"
}
target "alpine" {
  index   = "${local.base}/alpine:3.21"
  cmdline = "console=ttyS0"
}
target "linux" {
  index   = "${local.base}/linux:6.6"
  cmdline = "console=ttyS0"
}
