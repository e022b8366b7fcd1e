# Stub of oe-core's linux-yocto.
SUMMARY = "Linux kernel"
LICENSE = "GPL-2.0-only"
SRC_URI = ""
