target "proxmox-fde" {
  disk = {
    device           = "/dev/vda3"
    fs               = "zfs"
    dataset          = "rpool/ROOT/pve-1"
    luks-passphrase  = "$(meta.cloudboot.luks_passphrase)"
  }
}
