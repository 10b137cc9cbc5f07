
target "bad" {
  kernel = "registry/x"
  disk {
    device = "/dev/vda2"
  }
}