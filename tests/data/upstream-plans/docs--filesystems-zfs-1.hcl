target "proxmox" {
  disk = {
    device = "rpool/ROOT/pve-1"  # pool/dataset path
    fs     = "zfs"
    kernel = "/boot/vmlinuz-6.5.13-1-pve"
    initrd = "/boot/initrd.img-6.5.13-1-pve"
  }
}
