# Stub of oe-core's useradd class.
USERADD_PACKAGES ??= ""
DEPENDS:append = " base-passwd shadow-native"
