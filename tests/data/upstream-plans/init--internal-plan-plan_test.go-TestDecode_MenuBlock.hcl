
default_target = "primary"

menu {
  timeout = "5s"
  prompt  = "pick one"
}

target "primary" {
  label  = "Prod"
  kernel = "x"
}
target "rescue" {
  label  = "Rescue"
  kernel = "y"
}