SUMMARY = "Signed RAUC update bundle of branchgate-image"
DESCRIPTION = "A verity bundle with the branchgate-image rootfs for the inactive slot, as the box \
               accepts it (web UI upload, USB stick, `rauc install`): compatible BRANCHGATE_COMPATIBLE, version \
               BRANCHGATE_VERSION, signed by the vendor key."
SECTION = "firmware"
LICENSE = "MIT"

# A bundle has no sources of its own: the rootfs image comes from branchgate-image.
SRC_URI = ""

inherit bundle

RAUC_BUNDLE_FORMAT = "verity"
RAUC_BUNDLE_COMPATIBLE = "${BRANCHGATE_COMPATIBLE}"
RAUC_BUNDLE_VERSION = "${BRANCHGATE_VERSION}"
RAUC_BUNDLE_DESCRIPTION = "branchgate firmware ${BRANCHGATE_VERSION} for ${MACHINE}"

RAUC_BUNDLE_SLOTS = "rootfs"
RAUC_SLOT_rootfs = "branchgate-image"
RAUC_SLOT_rootfs[fstype] = "ext4"

# The signing certificate and key: from BRANCHGATE_KEYS_DIR (outside the repository), unless
# local.conf names others (RAUC_KEY_FILE may be a pkcs11: URI for a key in an HSM).
RAUC_CERT_FILE ?= "${BRANCHGATE_KEYS_DIR}/signing.cert.pem"
RAUC_KEY_FILE ?= "${BRANCHGATE_KEYS_DIR}/signing.key.pem"
