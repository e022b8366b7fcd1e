# Stub of oe-core's systemd class: which packages carry which units.
SYSTEMD_PACKAGES ??= "${PN}"
SYSTEMD_AUTO_ENABLE ??= "enable"
