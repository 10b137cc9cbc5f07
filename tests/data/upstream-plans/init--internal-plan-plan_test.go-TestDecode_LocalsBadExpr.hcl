
locals {
  broken = no.such.var
}
target "alpine" {
  index   = "x"
  cmdline = "console=ttyS0"
}
