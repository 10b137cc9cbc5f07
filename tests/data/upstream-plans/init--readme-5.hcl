target "primary" {
  kernel  = "registry.example.com/boot/linux:6.6"
  cmdline = lldp.available
    ? "console=ttyS0 hostname=node-${lldp.port_id}"
    : "console=ttyS0"
}
