# Stub of oe-core's pkgconfig class.
DEPENDS:prepend = "pkgconfig-native "
