# Stub of oe-core's image class: the variables branchgate-image sets or extends.
IMAGE_FEATURES ??= ""
IMAGE_FSTYPES ??= "tar.bz2"
IMAGE_LINGUAS ??= ""
ROOTFS_POSTPROCESS_COMMAND ??= ""
OVERLAYFS_ETC_MOUNT_POINT ??= ""
OVERLAYFS_ETC_DEVICE ??= ""
OVERLAYFS_ETC_FSTYPE ??= ""
WKS_FILE_DEPENDS_DEFAULT = "bmaptool-native e2fsprogs-native"
WKS_FILE_DEPENDS ??= "${WKS_FILE_DEPENDS_DEFAULT}"
do_image_wic() {
    :
}
do_rootfs() {
    :
}
addtask rootfs after do_install
addtask image_wic after do_rootfs before do_build
