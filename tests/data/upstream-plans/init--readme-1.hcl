default_target = "primary"

target "primary" {
    # `index` is the primary OCI ref — typically a multi-arch image
    # index whose per-arch manifest bundles kernel + initrd + modules
    # + cmdline as separate layers. cloud-boot-init merges all
    # recognised layers from this manifest into a single boot.
    index   = "registry.example.com/boot/linux:6.6"
    cmdline = "console=ttyS0 ro root=/dev/vda1"
}

target "rescue" {
    arch    = "amd64"   # optional arch filter
    # Role-specific refs (kernel / initrd / modules) override the
    # matching layer carried by `index`. Use them to swap one piece
    # without rebuilding the full bundle.
    kernel  = "registry.example.com/boot/rescue:latest"
    cmdline = "console=ttyS0 single"
}
