# Stub of meta-rauc's bundle class: its defaults (weak, as in the real class) and tasks.
RAUC_BUNDLE_COMPATIBLE ??= "${MACHINE}-${TARGET_VENDOR}"
RAUC_BUNDLE_VERSION ??= "${PV}"
RAUC_BUNDLE_DESCRIPTION ??= "${SUMMARY}"
RAUC_BUNDLE_BUILD ??= "${DATETIME}"
RAUC_BUNDLE_FORMAT ??= ""
RAUC_KEY_FILE ??= ""
RAUC_CERT_FILE ??= ""
RAUC_KEYRING_FILE ??= ""
python () {
    for slot in (d.getVar('RAUC_BUNDLE_SLOTS') or "").split():
        if not d.getVar('RAUC_SLOT_%s' % slot):
            bb.fatal("No image set for slot '%s'" % slot)
}
do_bundle() {
    :
}
addtask bundle after do_configure
