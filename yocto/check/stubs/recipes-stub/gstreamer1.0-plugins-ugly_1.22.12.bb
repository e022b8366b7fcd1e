# Stub of oe-core's gstreamer1.0-plugins-ugly.
SUMMARY = "'Ugly GStreamer plugins"
LICENSE = "LGPL-2.1-or-later & GPL-2.0-or-later"
PACKAGECONFIG ??= "a52dec mpeg2dec"
PACKAGECONFIG[x264] = "-Dx264=enabled,-Dx264=disabled,x264"
