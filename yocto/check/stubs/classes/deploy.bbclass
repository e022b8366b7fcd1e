# Stub of oe-core's deploy class.
DEPLOYDIR = "${WORKDIR}/deploy-${PN}"
