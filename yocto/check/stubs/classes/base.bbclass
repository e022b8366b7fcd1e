# Stub of oe-core's base class: the standard tasks (so recipes can append to and order against
# them) and FILESPATH, computed as oe-core's base_set_filespath does.
def base_set_filespath(path, d):
    filespath = []
    extrapaths = (d.getVar("FILESEXTRAPATHS") or "").replace("__default:", "")
    if extrapaths != "":
        path = extrapaths.split(":") + path
    overrides = (":" + (d.getVar("FILESOVERRIDES") or "")).split(":")
    overrides.reverse()
    for o in overrides:
        for p in path:
            if p != "":
                filespath.append(os.path.join(p, o))
    return ":".join(filespath)

FILESEXTRAPATHS ?= "__default:"

do_fetch() {
    :
}
do_unpack() {
    :
}
do_patch() {
    :
}
do_configure() {
    :
}
do_compile() {
    :
}
do_install() {
    :
}
do_build() {
    :
}
addtask fetch
addtask unpack after do_fetch
addtask patch after do_unpack
addtask configure after do_patch
addtask compile after do_configure
addtask install after do_compile
addtask build after do_install
