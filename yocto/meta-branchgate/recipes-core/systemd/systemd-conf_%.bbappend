# With DISTRO = "branchgate", systemd pets the hardware watchdog (i6300esb under qemu,
# bcm2835-wdt on the Pi): a hung kernel or PID 1 resets the box; branchgate.service's
# WatchdogSec= covers the daemon.
FILESEXTRAPATHS:prepend:branchgate := "${THISDIR}/${PN}:"

SRC_URI:append:branchgate = " file://watchdog.conf"

do_install:append:branchgate() {
    install -D -m0644 ${WORKDIR}/watchdog.conf ${D}${systemd_unitdir}/system.conf.d/10-branchgate-watchdog.conf
}
