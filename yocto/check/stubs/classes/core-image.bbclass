# Stub of oe-core's core-image class.
CORE_IMAGE_EXTRA_INSTALL ?= ""
IMAGE_INSTALL ?= "packagegroup-core-boot ${CORE_IMAGE_EXTRA_INSTALL}"
inherit image
