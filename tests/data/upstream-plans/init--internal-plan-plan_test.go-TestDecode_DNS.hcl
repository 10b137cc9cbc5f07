
dns = ["10.0.2.2", "1.1.1.1"]
target "alpine" {
  index   = "registry.example.com/boot/alpine:3.21"
  cmdline = "console=ttyS0"
}
