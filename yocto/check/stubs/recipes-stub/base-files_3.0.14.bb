# Stub of oe-core's base-files (with meta-rauc-raspberrypi's bbappend, which prepends its own
# fstab directory on rpi machines).
SUMMARY = "Miscellaneous files for the base system"
LICENSE = "GPL-2.0-only"
SRC_URI = "file://fstab"
