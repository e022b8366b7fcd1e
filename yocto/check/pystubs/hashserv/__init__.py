"""Stand-in for BitBake's hashserv package, which the bitbake-setup wheel does not ship but
bb.siggen imports. The parse check uses the "noop" signature handler: no hash server is used."""


def is_valid_unihash(unihash):
    return isinstance(unihash, str) and len(unihash) > 0


def create_client(*args, **kwargs):
    raise RuntimeError("no hash equivalence server in the parse check")
