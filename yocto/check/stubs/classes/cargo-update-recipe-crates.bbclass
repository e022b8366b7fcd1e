# Stub of oe-core's cargo-update-recipe-crates class (bitbake -c update_crates).
CARGO_LOCK_SRC_DIR ??= "${S}"
do_update_crates() {
    :
}
addtask do_update_crates after do_patch
do_update_crates[nostamp] = "1"
