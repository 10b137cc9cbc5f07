/*
 * A lab plan: a menu whose default depends on which switch the machine is cabled to
 * (LLDP), plus entries that chain to other published plans.
 */
default_target = lldp.available && lldp.system_name == "lab-sw1" ? "lab" : "prod"

menu {
  timeout = 10
  prompt  = "Boot menu (${arch})"
}

locals {
  registry = "registry.example.com/plans"
  console  = arch == "arm64" ? "ttyAMA0" : "ttyS0"
  site     = lldp.available ? lldp.system_name : "unknown"
  ports    = ["eth0", "eth1"]
}

target "prod" {
  label   = "Production plan"
  subplan = "${local.registry}/prod:latest"
}

target "lab" {
  label   = "Lab plan via ${local.site}"
  subplan = "oci://${local.registry}/lab:${lldp.port_id != "" ? lldp.port_id : "any"}"
}

target "installer" {
  label  = "Debian installer (${self.name})"
  kernel = "registry.example.com/boot/debian-installer:${arch}"
  initrd = "registry.example.com/boot/debian-installer-initrd:${arch}"
  cmdline = [
    "console=${local.console}",
    "interface=${local.ports[0]}",
    lldp.available ? "lldp.port=${lldp.port_desc}" : null,
    "priority=critical",
    meta.installer == null ? "" : "url=${meta.installer.preseed_url}",
  ]
}
