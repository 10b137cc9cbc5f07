
target "alpine" {
  index = "x"
  cmdline = ["console=ttyS0", 42]
}
