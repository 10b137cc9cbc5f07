default_target = "primary"

locals {
  registry = "_oci._tcp.registry.example.com/boot"
  console  = arch == "arm64" ? "ttyAMA0" : "ttyS0"   # locals see `arch`
}

target "primary" {
    version = "6.6"
    label   = "Production Linux ${self.version}"
    index   = "${local.registry}/linux:${self.version}"
    cmdline = "console=${local.console} ro root=/dev/vda1"
}

target "rescue" {
    arch    = "amd64"   # optional arch filter
    kernel  = "${local.registry}/rescue:latest"
    cmdline = [
      "console=${local.console}",
      "single",
      "rd.break",
    ]
}
