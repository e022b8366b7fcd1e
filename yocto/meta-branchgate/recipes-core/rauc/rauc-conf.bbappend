# The box's RAUC configuration: A/B rootfs slots, verity bundles only, the `compatible` the
# daemon checks (BRANCHGATE_COMPATIBLE), and the vendor keyring.
FILESEXTRAPATHS:prepend := "${THISDIR}/files:"
# The keyring comes from BRANCHGATE_KEYS_DIR (outside the repository) when it is there; the
# placeholder in files/ only says how to supply it and stops the build (do_install below).
FILESEXTRAPATHS:prepend = "${BRANCHGATE_KEYS_DIR}:"

RAUC_KEYRING_FILE = "branchgate-keyring.pem"

do_install:prepend() {
    if ! grep -q "BEGIN CERTIFICATE" ${WORKDIR}/${RAUC_KEYRING_FILE}; then
        bbfatal "No vendor keyring: put the CA certificate(s) bundles must chain to at ${BRANCHGATE_KEYS_DIR}/${RAUC_KEYRING_FILE} (see yocto/README.md)"
    fi
    sed -i -e 's#@COMPATIBLE@#${BRANCHGATE_COMPATIBLE}#g' \
        -e 's#@KEYRING@#${sysconfdir}/rauc/${RAUC_KEYRING_FILE}#g' \
        ${WORKDIR}/system.conf
}
