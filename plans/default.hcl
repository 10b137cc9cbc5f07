# The demo workspace's plan: two targets on the same chained disk.
#
# Both boot the kernel found on the ext4 filesystem labelled "cbtarget" (the guest reads
# /boot/vmlinuz-* and its initrd from it in userland). Edit default_target to switch
# what boots: `cloudboot up` publishes the edit and restarts the VM into it. There is no
# menu {} block on purpose, so a live reload boots what you just published without a
# countdown; plans/menu.hcl shows a menu (or boot with cloudboot.menu=1).

default_target = "alpha"

# Two consoles: the arch's UART (QEMU) and hvc0, vfkit's virtio console; the last one
# that exists is /dev/console, so the same plan shows its output under both backends.
locals {
  console = arch == "arm64" ? "ttyAMA0" : "ttyS0"
}

target "alpha" {
  label = "Alpha (${arch})"
  disk {
    device = "LABEL=cbtarget"
    fs     = "ext4"
  }
  cmdline = [
    "console=${local.console}",
    "console=hvc0",
    "root=LABEL=cbtarget",
    "ro",
    "cloudboot.demo=${self.name}",
    "no_timer_check", # x86 under QEMU TCG: see kernel/recipe.toml's cmdline
  ]
}

target "beta" {
  label = "Beta (${arch})"
  disk {
    device = "LABEL=cbtarget"
    fs     = "ext4"
  }
  cmdline = [
    "console=${local.console}",
    "console=hvc0",
    "root=LABEL=cbtarget",
    "ro",
    "cloudboot.demo=${self.name}",
    "no_timer_check", # x86 under QEMU TCG: see kernel/recipe.toml's cmdline
  ]
}
