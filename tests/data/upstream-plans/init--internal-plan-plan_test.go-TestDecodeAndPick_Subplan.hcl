
default_target = "production"
target "production" {
  label   = "Live fleet"
  subplan = "registry.example.com/boot/production:latest"
}
