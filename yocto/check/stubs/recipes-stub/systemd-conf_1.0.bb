# Stub of oe-core's systemd-conf.
SUMMARY = "Systemd system configuration"
LICENSE = "MIT"
SRC_URI = ""
do_install() {
    install -d ${D}${systemd_unitdir}/system.conf.d
}
