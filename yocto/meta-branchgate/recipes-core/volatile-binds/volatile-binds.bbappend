# With DISTRO = "branchgate", /var/lib lives on the data partition: an overlay of the rootfs's
# /var/lib with /data/var-lib as its upper layer (mount-copybind), so /var/lib/branchgate (the
# daemon's StateDirectory: configuration, certificates, CDRs) survives reboots and A/B updates.
# /data is mounted before init by the image's /etc overlay (overlayfs-etc). The rest stays volatile.
# The value is a list separated by literal \n (VOLATILE_BINDS[separator]), as in oe-core's recipe,
# which oelint's indentation rule misreads.
# nooelint: oelint.vars.multilineident
VOLATILE_BINDS:branchgate = "\
    /data/var-lib ${localstatedir}/lib\n\
    ${localstatedir}/volatile/cache ${localstatedir}/cache\n\
    ${localstatedir}/volatile/spool ${localstatedir}/spool\n\
    ${localstatedir}/volatile/srv ${servicedir}\n\
    "
