
target "a" { kernel = "x" }
target "b" {
  arch   = "arm64"
  kernel = "y"
}
target "c" {
  arch   = "amd64"
  kernel = "z"
}
