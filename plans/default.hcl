# The demo workspace's plan: two targets on the same chained disk, picked from a menu.
#
# Both boot the kernel found on the ext4 filesystem labelled "cbtarget" (the guest reads
# /boot/vmlinuz-* and its initrd from it in userland). Edit default_target to switch
# what boots when nobody touches the menu.

default_target = "alpha"

locals {
  console = arch == "arm64" ? "ttyAMA0" : "ttyS0"
}

menu {
  timeout = "3s"
  prompt  = "cloudboot demo: pick a target"
}

target "alpha" {
  label = "Alpha (${arch})"
  disk {
    device = "LABEL=cbtarget"
    fs     = "ext4"
  }
  cmdline = [
    "console=${local.console}",
    "root=LABEL=cbtarget",
    "ro",
    "cloudboot.demo=${self.name}",
  ]
}

target "beta" {
  label = "Beta (${arch})"
  disk = {
    device = "LABEL=cbtarget"
    fs     = "ext4"
  }
  cmdline = [
    "console=${local.console}",
    "root=LABEL=cbtarget",
    "ro",
    "cloudboot.demo=${self.name}",
  ]
}
