# Stub of oe-core's features_check class: a recipe needing machine or distro features the
# build lacks is skipped, as in a real parse.
python () {
    for kind in ("MACHINE", "DISTRO"):
        required = (d.getVar("REQUIRED_%s_FEATURES" % kind) or "").split()
        have = (d.getVar("%s_FEATURES" % kind) or "").split()
        missing = [f for f in required if f not in have]
        if missing:
            raise bb.parse.SkipRecipe("missing required %s feature(s) %s" % (kind.lower(), " ".join(missing)))
}
