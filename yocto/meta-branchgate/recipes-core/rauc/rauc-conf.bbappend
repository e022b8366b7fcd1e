# The box's RAUC configuration (only with DISTRO = "branchgate"): A/B rootfs slots, verity
# bundles only, the `compatible` the daemon checks (BRANCHGATE_COMPATIBLE), the vendor keyring.
# The keyring comes from BRANCHGATE_KEYS_DIR (outside the repository); the placeholder in files/
# only says how to supply it, and do_install stops the build while it is what was found.
FILESEXTRAPATHS:prepend:branchgate := "${BRANCHGATE_KEYS_DIR}:${THISDIR}/files:"

RAUC_KEYRING_FILE:branchgate = "branchgate-keyring.pem"

do_install:prepend:branchgate() {
    if ! grep -q "BEGIN CERTIFICATE" ${WORKDIR}/${RAUC_KEYRING_FILE}; then
        bbfatal "No vendor keyring: put the CA certificate(s) bundles must chain to at ${BRANCHGATE_KEYS_DIR}/${RAUC_KEYRING_FILE} (see yocto/README.md)"
    fi
    sed -i -e 's#@COMPATIBLE@#${BRANCHGATE_COMPATIBLE}#g' \
        -e 's#@KEYRING@#${sysconfdir}/rauc/${RAUC_KEYRING_FILE}#g' \
        ${WORKDIR}/system.conf
}
