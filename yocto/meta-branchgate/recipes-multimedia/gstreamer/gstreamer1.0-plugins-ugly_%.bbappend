# x264enc: the software H.264 encoder of the camera pipeline (media/capture), with
# DISTRO = "branchgate". x264 is in oe-core; both recipes carry LICENSE_FLAGS "commercial"
# (accepted in conf/distro/branchgate.conf).
PACKAGECONFIG:append:branchgate = " x264"
