# Kernel options the branchgate box relies on (linux-yocto: qemux86-64, qemuarm64), with
# DISTRO = "branchgate".
FILESEXTRAPATHS:prepend:branchgate := "${THISDIR}/${PN}:"

SRC_URI:append:branchgate = " file://branchgate.cfg"
# Virtual test devices (vivid camera, snd-aloop/snd-dummy) for test images only: set
# BRANCHGATE_TEST_DEVICES = "1"; production images leave it unset.
SRC_URI:append:branchgate = " ${@'file://branchgate-test-devices.cfg' if bb.utils.to_boolean(d.getVar('BRANCHGATE_TEST_DEVICES'), False) else ''}"
