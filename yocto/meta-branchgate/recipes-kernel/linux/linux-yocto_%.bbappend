# Kernel options the branchgate box relies on (linux-yocto: qemux86-64, qemuarm64).
FILESEXTRAPATHS:prepend := "${THISDIR}/${PN}:"

SRC_URI += "file://branchgate.cfg"
# Virtual test devices (vivid camera, snd-aloop/snd-dummy) for test images only; production
# images leave BRANCHGATE_TEST_DEVICES unset.
SRC_URI += "${@oe.utils.vartrue('BRANCHGATE_TEST_DEVICES', 'file://branchgate-test-devices.cfg', '', d)}"
