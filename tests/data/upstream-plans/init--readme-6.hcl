target "primary" {
  kernel  = "_oci._tcp.registry.example.com/boot/linux:6.6"
  initrd  = "_oci._tcp.registry.example.com/boot/initrd:fedora"
  modules = "_oci._tcp.registry.example.com/boot/modules:6.6"
}
