target "fedora" {
  disk = {
    device = "/dev/vda3"
    fs     = "btrfs"
  }
}
