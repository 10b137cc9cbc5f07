target "alma" {
  disk = {
    device = "/dev/vda2"
    fs     = "xfs"
  }
}
