# /var/lib lives on the data partition: an overlay of the rootfs's /var/lib with
# /data/var-lib as the upper layer (mount-copybind), so /var/lib/branchgate (the daemon's
# StateDirectory: configuration, certificates, CDRs) survives reboots and A/B updates.
# /data is mounted before init by the image's /etc overlay (overlayfs-etc). The rest stays volatile.
VOLATILE_BINDS = "\
    /data/var-lib ${localstatedir}/lib\n\
    ${localstatedir}/volatile/cache ${localstatedir}/cache\n\
    ${localstatedir}/volatile/spool ${localstatedir}/spool\n\
    ${localstatedir}/volatile/srv /srv\n\
"
