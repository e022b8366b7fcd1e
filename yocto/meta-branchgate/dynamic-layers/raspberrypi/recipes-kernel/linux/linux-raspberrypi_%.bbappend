# The box's kernel options on the Raspberry Pi kernel (meta-raspberrypi's linux-raspberrypi
# merges .cfg fragments like linux-yocto), with DISTRO = "branchgate": the common fragment plus
# the Pi's watchdog.
FILESEXTRAPATHS:prepend:branchgate := "${THISDIR}/${PN}:${THISDIR}/../../../../recipes-kernel/linux/linux-yocto:"

SRC_URI:append:branchgate = " file://branchgate.cfg file://branchgate-rpi.cfg"
