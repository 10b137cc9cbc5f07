
default_target = "primary"

target "primary" {
  kernel  = "registry/boot/linux:6.6"
  initrd  = "registry/boot/initrd:fedora"
  modules = "registry/boot/modules:6.6"
  cmdline = lldp.available ? "console=ttyS0 node-${lldp.port_id}" : "console=ttyS0"
}

target "rescue" {
  arch    = "amd64"
  kernel  = "registry/boot/rescue:latest"
  cmdline = "rd.break"
}
