# Stub of oe-core's cargo class: its build flags (recipes append to them) and tasks.
inherit cargo_common
B = "${WORKDIR}/build"
BUILD_MODE = "--release"
CARGO_BUILD_FLAGS = "-v --frozen --target ${TARGET_SYS} ${BUILD_MODE} --manifest-path=${CARGO_MANIFEST_PATH}"
DEPENDS:append = " rust-native cargo-native"
cargo_do_compile() {
    cargo build ${CARGO_BUILD_FLAGS}
}
cargo_do_install() {
    install -d ${D}${bindir}
}
EXPORT_FUNCTIONS do_compile do_install
