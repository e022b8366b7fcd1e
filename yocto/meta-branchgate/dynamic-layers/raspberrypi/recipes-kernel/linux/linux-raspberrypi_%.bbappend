# The box's kernel options on the Raspberry Pi kernel (meta-raspberrypi's linux-raspberrypi
# merges .cfg fragments like linux-yocto): the common fragment plus the Pi's watchdog.
FILESEXTRAPATHS:prepend := "${THISDIR}/${PN}:${THISDIR}/../../../../recipes-kernel/linux/linux-yocto:"

SRC_URI += " \
    file://branchgate.cfg \
    file://branchgate-rpi.cfg \
"
