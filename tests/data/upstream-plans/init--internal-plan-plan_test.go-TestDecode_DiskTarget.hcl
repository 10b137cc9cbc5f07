
target "from-disk" {
  cmdline = "console=ttyS0 ro"
  disk {
    device = "/dev/vda2"
    fs     = "ext4"
    kernel = "/boot/vmlinuz-6.6"
  }
}