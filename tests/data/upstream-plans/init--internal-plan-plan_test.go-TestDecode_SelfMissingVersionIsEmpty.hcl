
target "x" {
  index   = "registry/x:${self.version}"
  cmdline = "y"
}
