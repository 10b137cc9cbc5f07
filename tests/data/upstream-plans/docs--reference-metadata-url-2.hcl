locals {
  secret_key = "luks_passphrase_${meta.instance_id}"
}
target "fde" {
  disk = {
    luks-passphrase = lookup(meta.cloudboot.secrets, local.secret_key, "")
  }
}
