locals {
  console = arch == "arm64" ? "ttyAMA0" : "ttyS0"
}
