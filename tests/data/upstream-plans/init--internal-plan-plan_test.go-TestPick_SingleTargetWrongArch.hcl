target "only" {
  arch   = "arm64"
  kernel = "x"
}