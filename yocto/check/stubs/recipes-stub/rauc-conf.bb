# Stub of meta-rauc's rauc-conf (the part its bbappends change).
SUMMARY = "RAUC system configuration & verification keyring"
LICENSE = "MIT"
RAUC_KEYRING_FILE ??= "ca.cert.pem"
RAUC_KEYRING_URI ??= "file://${RAUC_KEYRING_FILE}"
SRC_URI = "file://system.conf ${RAUC_KEYRING_URI}"
do_install() {
    install -d ${D}${sysconfdir}/rauc
    install -m 0644 ${WORKDIR}/system.conf ${D}${sysconfdir}/rauc/
    install -m 0644 ${WORKDIR}/${RAUC_KEYRING_FILE} ${D}${sysconfdir}/rauc/
}
