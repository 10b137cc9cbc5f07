
target "bad" {
  index   = "x:1"
  subplan = "y:2"
}
