target "btrfs-raid5" {
  disk = {
    # any one leg — cloud-boot-init finds the others via fsid scan
    device = "/dev/vda3"
    fs     = "btrfs"
  }
}
