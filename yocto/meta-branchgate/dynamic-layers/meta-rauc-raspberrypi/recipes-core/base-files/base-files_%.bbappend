# meta-rauc-raspberrypi's fstab mounts its own six-partition layout (data on p5, /home on p6);
# branchgate's SD card has four partitions (wic/branchgate-rpi.wks.in), and the data partition is
# mounted before init by overlayfs-etc. This fstab (files/raspberrypi4-64/, chosen over theirs by
# the machine override) mounts only the boot partition, where U-Boot's environment lives.
FILESEXTRAPATHS:prepend:branchgate := "${THISDIR}/files:"
