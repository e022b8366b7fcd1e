SUMMARY = "branchgate production image"
DESCRIPTION = "The box's firmware: read-only ext4 rootfs in A/B slots updated by RAUC, /etc as an \
               overlay and /var/lib (branchgate's data) on the data partition, the branchgate daemon under \
               systemd with the hardware watchdog."
SECTION = "images"
LICENSE = "MIT"

inherit core-image

# Production defaults: no debug-tweaks (no passwordless root; the box is administered through
# the web UI), read-only rootfs, /etc overlaid from the data partition.
IMAGE_FEATURES += "read-only-rootfs overlayfs-etc"
IMAGE_LINGUAS = ""

# GStreamer elements for real devices, beside those the daemon's own pipeline needs (branchgate
# RDEPENDS on app, videoconvertscale, rtp and x264): v4l2src for the cameras hal lists under
# /sys/class/video4linux, alsasrc/alsasink for the sound cards.
BRANCHGATE_GST_PLUGINS = "gstreamer1.0-plugins-base-alsa gstreamer1.0-plugins-good-video4linux2"

# Boot glue per machine: GRUB's environment and the ESP mount on EFI machines (RAUC switches
# slots with grub-editenv); on the Raspberry Pi, meta-rauc-raspberrypi's rauc bbappend brings
# U-Boot's fw_setenv.
BRANCHGATE_BOOT_INSTALL = "branchgate-boot grub-editenv"
BRANCHGATE_BOOT_INSTALL:raspberrypi4-64 = ""

# util-linux-mount: the /etc overlay's preinit mounts the data partition by LABEL= before udev
# runs, which util-linux's mount resolves by probing (libblkid). kernel-image: each slot boots
# its own /boot/<KERNEL_IMAGETYPE>.
IMAGE_INSTALL = "packagegroup-core-boot \
                 systemd-conf \
                 util-linux-mount \
                 kernel-image \
                 kernel-modules \
                 rauc \
                 branchgate \
                 ${BRANCHGATE_GST_PLUGINS} \
                 ${BRANCHGATE_BOOT_INSTALL} \
                 ${CORE_IMAGE_EXTRA_INSTALL} \
                 "

# Disk layout (wic/): ESP or Pi boot partition, rootfs A, rootfs B, data. The rootfs image
# (ext4, also the payload of branchgate-bundle) must fit a slot.
BRANCHGATE_SLOT_SIZE_KB = "1048576"
BRANCHGATE_DATA_SIZE_KB = "2097152"
BRANCHGATE_SLOT_SIZE = "${BRANCHGATE_SLOT_SIZE_KB}K"
BRANCHGATE_DATA_SIZE = "${BRANCHGATE_DATA_SIZE_KB}K"
IMAGE_ROOTFS_MAXSIZE = "${BRANCHGATE_SLOT_SIZE_KB}"
IMAGE_FSTYPES = "ext4 wic.zst wic.bmap"
WKS_FILE = "branchgate-efi.wks.in"
WKS_FILE:raspberrypi4-64 = "branchgate-rpi.wks.in"
# EFI machines: GRUB and branchgate-boot's grubenv must be deployed before wic assembles the ESP,
# which also gets IMAGE_EFI_BOOT_FILES. The Pi's boot partition comes from meta-raspberrypi.
BRANCHGATE_EFI_RECIPES = "grub-efi branchgate-boot"
BRANCHGATE_EFI_RECIPES:raspberrypi4-64 = ""
WKS_FILE_DEPENDS:append = " ${BRANCHGATE_EFI_RECIPES}"
do_image_wic[depends] += "${@' '.join('%s:do_deploy' % r for r in d.getVar('BRANCHGATE_EFI_RECIPES').split())}"
IMAGE_EFI_BOOT_FILES = "grubenv;EFI/BOOT/grubenv"
# The kernel boots from the slot's /boot, not from the Pi's boot partition.
RPI_EXTRA_IMAGE_BOOT_FILES:remove:raspberrypi4-64 = "${KERNEL_IMAGETYPE}"

# The data partition (ext4, label branchgate-data) is mounted at /data before init
# (overlayfs-etc's preinit) and carries the /etc overlay; volatile-binds puts /var/lib on it
# (/data/var-lib), RAUC its status (/data/rauc).
OVERLAYFS_ETC_MOUNT_POINT = "/data"
OVERLAYFS_ETC_DEVICE = "LABEL=branchgate-data"
OVERLAYFS_ETC_FSTYPE = "ext4"
OVERLAYFS_ETC_MOUNT_OPTIONS = "defaults,noatime"
# The rootfs stays read-only: the mount point is made here, not by the preinit.
OVERLAYFS_ETC_CREATE_MOUNT_DIRS = "0"

ROOTFS_POSTPROCESS_COMMAND += "branchgate_data_mountpoint"

branchgate_data_mountpoint[doc] = "Creates /data, the data partition's mount point, in the read-only rootfs"
branchgate_data_mountpoint() {
    install -d -m 0755 ${IMAGE_ROOTFS}/data
}
