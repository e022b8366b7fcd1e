# Stub of meta-raspberrypi's linux-raspberrypi.
SUMMARY = "Linux kernel for the Raspberry Pi"
LICENSE = "GPL-2.0-only"
SRC_URI = ""
