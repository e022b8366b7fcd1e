SUMMARY = "branchgate: the branch-office SIP/WebRTC gateway daemon"
DESCRIPTION = "One Rust daemon (bin branchgate): SIP B2BUA/SBC, WebRTC gateway, STUN/TURN relay, \
               camera streaming and the web admin, with signed RAUC-compatible firmware updates."
SECTION = "net"
# The workspace is Apache-2.0: the `license` line of its Cargo.toml (there is no license file).
# The crates linked in are under the licences deny.toml lets cargo-deny accept.
LICENSE = "Apache-2.0"
LIC_FILES_CHKSUM = "file://Cargo.toml;beginline=25;endline=25;md5=2507bd5f0713f05419cd2f22fa06fe62"

# What the workspace links:
#   openssl-sys        CMS signatures of firmware bundles           -> openssl
#   audiopus_sys       libopus through pkg-config (opus 0.3)        -> libopus
#   glib-sys, gobject-sys, gio-sys, gstreamer(-base,-app)-sys       -> glib-2.0, gstreamer1.0,
#                      through system-deps/pkg-config                  gstreamer1.0-plugins-base
#   ring               C and assembly, built with the target compiler
#   alsa-sys           libasound through pkg-config (hal's ALSA)   -> alsa-lib
#   v4l2-sys-mit       bindgen over the kernel's videodev2.h, which needs libclang at build time
#                      -> clang-native (meta-clang)
DEPENDS = "alsa-lib clang-native glib-2.0 gstreamer1.0 gstreamer1.0-plugins-base libopus openssl"

# bindgen finds the native libclang and parses the target's headers, not the build host's.
export LIBCLANG_PATH = "${STAGING_LIBDIR_NATIVE}"
export BINDGEN_EXTRA_CLANG_ARGS = "--sysroot=${STAGING_DIR_TARGET} --target=${TARGET_SYS}"

# The workspace version (BRANCHGATE_VERSION, layer.conf); ./x yocto-check compares it with Cargo.toml.
PV = "${BRANCHGATE_VERSION}+git"

# The source is the repository this layer is part of (BRANCHGATE_SRC_REPO, set in layer.conf).
# BRANCHGATE_SRCREV picks the commit: the newest on BRANCHGATE_BRANCH unless a release build sets
# it (BRANCHGATE_SRCREV=$(git rev-parse HEAD), see yocto/README.md).
BRANCHGATE_BRANCH ??= "main"
BRANCHGATE_SRCREV ??= "${AUTOREV}"
SRC_URI = "git://${BRANCHGATE_SRC_REPO};protocol=file;branch=${BRANCHGATE_BRANCH} \
           file://branchgate.service \
           "
SRCREV = "${BRANCHGATE_SRCREV}"

S = "${WORKDIR}/git"

# Every crates.io package of Cargo.lock, made by ./x yocto-crates (yocto/tools/crates_inc.py).
require ${BPN}-crates.inc

inherit cargo cargo-update-recipe-crates pkgconfig systemd useradd

CVE_PRODUCT = "branchgate"

# Only the daemon, not every workspace member's tests or examples.
CARGO_BUILD_FLAGS += "--package branchgate"
# The workspace's release profile strips; let BitBake strip and split the debug info instead.
export CARGO_PROFILE_RELEASE_STRIP = "false"
# openssl-sys: the target's OpenSSL from the sysroot, never a vendored copy.
export OPENSSL_DIR = "${STAGING_EXECPREFIXDIR}"
export OPENSSL_NO_VENDOR = "1"

USERADD_PACKAGES = "${PN}"
USERADD_PARAM:${PN} = "--system --user-group --groups video,audio --home-dir ${localstatedir}/lib/${BPN} --no-create-home --shell ${base_sbindir}/nologin ${BPN}"

SYSTEMD_SERVICE:${PN} = "${BPN}.service"

do_install:append() {
    install -d ${D}${systemd_system_unitdir}
    sed -e 's#@BINDIR@#${bindir}#g' \
        -e 's#@LOCALSTATEDIR@#${localstatedir}#g' \
        -e 's#@SYSCONFDIR@#${sysconfdir}#g' \
        -e 's#@COMPATIBLE@#${BRANCHGATE_COMPATIBLE}#g' \
        ${WORKDIR}/branchgate.service > ${D}${systemd_system_unitdir}/${BPN}.service
    chmod 0644 ${D}${systemd_system_unitdir}/${BPN}.service
}

# Run-time needs of the daemon itself:
# - the GStreamer elements of the camera pipeline (media/capture: appsrc ! videoconvert ! x264enc
#   ! rtph264pay ! appsink) and of recording (appsrc ! rtph264depay ! h264parse ! splitmuxsink with
#   mp4mux or matroskamux);
# - unsquashfs/mksquashfs: `branchgate bundle create` and the simulated A/B slots, which the
#   daemon still uses for uploads until its RAUC D-Bus backend exists;
# - the keyring the unit passes with --firmware-keyring (rauc-conf installs it).
RDEPENDS:${PN} = "gstreamer1.0-plugins-bad-videoparsersbad \
                  gstreamer1.0-plugins-base-app \
                  gstreamer1.0-plugins-base-videoconvertscale \
                  gstreamer1.0-plugins-good-isomp4 \
                  gstreamer1.0-plugins-good-matroska \
                  gstreamer1.0-plugins-good-multifile \
                  gstreamer1.0-plugins-good-rtp \
                  gstreamer1.0-plugins-ugly-x264 \
                  squashfs-tools \
                  virtual-rauc-conf \
                  "
