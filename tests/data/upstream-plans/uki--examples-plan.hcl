// Example boot plan consumed by cloud-boot-init when the boot UKI
// carries cloudboot.plan=<ref-of-this-plan-as-an-OCI-artifact>.
//
// Fields are HCL expressions evaluated against an EvalContext exposing:
//
//   arch                runtime arch ("amd64" | "arm64" | "riscv64")
//   lldp.available      true if an LLDP frame was observed at boot
//   lldp.port_id        upstream switch port ID (typically the iface name)

default_target = "primary"

# Shared registry base, factored into a `locals` block so multiple
# targets stay in sync. Targets reference it as ${local.registry}.
locals {
  registry         = "_oci._tcp.registry.example.com/boot"
  fallback_registry = "127.0.0.1:5000/boot"
}

# dns = ["10.0.2.2", "1.1.1.1"]

# Interactive boot menu.
menu {
  timeout = "5s"
  prompt  = "cloud-boot: choose a target"
}

target "primary" {
  label   = "Production Linux 6.6"
  # Demonstrates the four-ref split: a kernel-only ref + an initrd-only
  # ref + a modules-only ref, all merged at boot time.
  kernel  = "${local.registry}/linux:6.6"
  initrd  = "${local.registry}/initrd:fedora"
  modules = "${local.registry}/modules:6.6"
  cmdline = lldp.available ? "console=ttyS0 ro root=LABEL=root hostname=node-${lldp.port_id}" : "console=ttyS0 ro root=LABEL=root"
}

target "rescue" {
  label   = "Rescue shell (rd.break)"
  arch    = "amd64"
  # `index` here because the rescue image bundles kernel + initramfs in
  # a single OCI artifact (typical for self-contained installers).
  index   = "${local.fallback_registry}/rescue:latest"
  cmdline = "console=ttyS0 single rd.break"
}

target "arm-edge" {
  label   = "ARM edge node"
  arch    = "arm64"
  kernel  = "${local.fallback_registry}/linux:6.6"
  modules = "${local.fallback_registry}/modules:6.6"
  cmdline = "console=ttyAMA0 ro"
}

# Boot the kernel that already lives on a local disk.
target "from-disk" {
  label   = "Boot from local disk (/dev/vda2)"
  cmdline = "console=ttyS0 ro root=/dev/vda2"
  disk {
    device = "/dev/vda2"
    fs     = "ext4"
  }
}
