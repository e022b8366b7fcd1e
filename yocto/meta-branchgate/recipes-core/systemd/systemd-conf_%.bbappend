# systemd pets the hardware watchdog (i6300esb under qemu, bcm2835-wdt on the Pi): a hung
# kernel or PID 1 resets the box; branchgate.service's WatchdogSec= covers the daemon.
FILESEXTRAPATHS:prepend := "${THISDIR}/${PN}:"

SRC_URI += "file://watchdog.conf"

do_install:append() {
    install -D -m0644 ${WORKDIR}/watchdog.conf ${D}${systemd_unitdir}/system.conf.d/10-branchgate-watchdog.conf
}
