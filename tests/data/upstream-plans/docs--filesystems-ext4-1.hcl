target "primary" {
  disk = {
    device = "/dev/vda3"     # the partition with the rootfs
    fs     = "ext4"
    kernel = "/boot/vmlinuz" # optional — falls back to newest glob
    initrd = "/boot/initrd"  # same
  }
}
