SUMMARY = "A/B boot glue for branchgate's EFI machines (GRUB environment, ESP mount)"
DESCRIPTION = "Deploys the initial GRUB environment block that wic puts on the ESP \
               (EFI/BOOT/grubenv: ORDER, A_OK, A_TRY, ... of RAUC's grub backend) and mounts the ESP at \
               /boot/efi so RAUC can switch slots with grub-editenv. The boot menu itself is \
               wic/branchgate-grub.cfg."
SECTION = "bootloaders"
# The unit and the environment block are this layer's own files: no upstream source to take a
# licence file from.
LICENSE = "MIT"
# nooelint: oelint.var.licenseremotefile
LIC_FILES_CHKSUM = "file://${COMMON_LICENSE_DIR}/MIT;md5=0835ade698e0bcf8506ecda2f7b4f302"

SRC_URI = "file://boot-efi.mount"

S = "${WORKDIR}"

inherit deploy features_check systemd

REQUIRED_MACHINE_FEATURES = "efi"

SYSTEMD_SERVICE:${PN} = "boot-efi.mount"

do_compile() {
    # An empty GRUB environment block (what `grub-editenv grubenv create` writes): GRUB can only
    # rewrite this 1 KiB file in place, not create it. The boot menu's defaults apply until
    # RAUC writes the variables.
    printf '# GRUB Environment Block\n' > ${B}/grubenv
    head -c 999 /dev/zero | tr '\0' '#' >> ${B}/grubenv
}

do_install() {
    install -d ${D}/boot/efi
    install -D -m 0644 ${S}/boot-efi.mount ${D}${systemd_system_unitdir}/boot-efi.mount
}

do_deploy() {
    install -m 0644 ${B}/grubenv ${DEPLOYDIR}/grubenv
}
addtask deploy after do_compile before do_build

FILES:${PN} += "/boot/efi"
