#!/usr/bin/env python3
"""Parse every recipe and bbappend of meta-branchgate with BitBake's own parser.

Run with the Python of yocto/check/.venv (BitBake's `bb` package from the bitbake-setup wheel).
There is no poky here, so the layer is read against stubs (yocto/check/stubs: a reduced
bitbake.conf, the classes it inherits, the recipes it appends to), for each machine the layer
knows, with DISTRO = "branchgate". What this catches: syntax errors (a ParseError names file and
line), unknown classes or includes, inline Python that fails, variables that do not expand,
file:// sources that FILESPATH cannot find, bbappends without a recipe, layer.conf errors, the
image's wks file and its variables. Then the layer's cross-checks against the firmware:
BRANCHGATE_VERSION == Cargo.toml's version, LIC_FILES_CHKSUM against the repository, the unit's
ExecStart flags against the daemon's CLI, BRANCHGATE_COMPATIBLE against
branchgate_update::DEFAULT_COMPATIBLE. Exit 1 with the reasons when anything fails.
"""

import fnmatch
import glob
import hashlib
import logging
import os
import re
import sys
import tempfile

# bb.siggen imports hashserv, which the wheel lacks: a stand-in (yocto/check/pystubs).
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "pystubs"))

import bb  # noqa: E402
import bb.codeparser  # noqa: E402
import bb.data  # noqa: E402
import bb.parse  # noqa: E402
import bb.siggen  # noqa: E402
import bb.utils  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
LAYER = os.path.join(ROOT, "yocto", "meta-branchgate")
STUBS = os.path.join(ROOT, "yocto", "check", "stubs")
MACHINES = ["qemux86-64", "qemuarm64", "raspberrypi4-64"]
# The Rust target_arch of each TARGET_ARCH (firmware/update/src/lib.rs is keyed on it).
RUST_ARCH = {"x86_64": "x86_64", "aarch64": "aarch64"}

errors = []


def error(msg):
    if msg in errors:
        return
    errors.append(msg)
    print("  FAIL " + msg)


def parse_config(machine, tmp):
    d = bb.data.init()
    d.setVar("TOPDIR", tmp)
    d.setVar("BB_CACHEDIR", os.path.join(tmp, "cache"))
    d.setVar("BB_SIGNATURE_HANDLER", "noop")
    d.setVar("MACHINE", machine)
    d.setVar("DISTRO", "branchgate")
    d.setVar("__bbclasstype", "global")
    layers = [STUBS, LAYER]
    d.setVar("BBLAYERS", " ".join(layers))
    compat = {}
    for layer in layers:
        d.setVar("LAYERDIR", layer)
        d.setVar("LAYERDIR_RE", re.escape(layer))
        d = bb.parse.handle(os.path.join(layer, "conf", "layer.conf"), d, True, baseconfig=True)
        d.expandVarref("LAYERDIR")
        d.expandVarref("LAYERDIR_RE")
        for c in (d.getVar("BBFILE_COLLECTIONS") or "").split():
            value = d.getVar("LAYERSERIES_COMPAT_%s" % c)
            if value:
                compat[c] = value.split()
    d.delVar("LAYERDIR")
    d.delVar("LAYERDIR_RE")

    collections = (d.getVar("BBFILE_COLLECTIONS") or "").split()
    series = (d.getVar("LAYERSERIES_CORENAMES") or "").split()
    if not set(compat.get("branchgate", [])) & set(series):
        error(f"layer.conf: LAYERSERIES_COMPAT_branchgate {compat.get('branchgate')} does not name {series}")
    for dep in (d.getVar("LAYERDEPENDS_branchgate") or "").split():
        if dep.split(":")[0] not in collections:
            error(f"layer.conf: LAYERDEPENDS_branchgate names {dep}, which no layer provides")
    for entry in (d.getVar("BBFILES_DYNAMIC") or "").split():
        name, _, pattern = entry.partition(":")
        if not pattern:
            error(f"layer.conf: BBFILES_DYNAMIC entry {entry!r} is not <collection>:<pattern>")
        elif name.lstrip("!") in collections:
            d.appendVar("BBFILES", " " + pattern)

    d = bb.parse.handle(os.path.join("conf", "bitbake.conf"), d, True, baseconfig=True)
    for bbclass in ["base"] + (d.getVar("INHERIT") or "").split():
        bb.parse.BBHandler.inherit(bbclass, "configuration INHERITs", 0, d)
    return d


def collect_files(d):
    files = set()
    for pattern in (d.getVar("BBFILES") or "").split():
        files.update(glob.glob(pattern))
    recipes = sorted(f for f in files if f.endswith(".bb"))
    appends = sorted(f for f in files if f.endswith(".bbappend"))
    return recipes, appends


def appends_for(recipe, appends):
    name = os.path.basename(recipe)[: -len(".bb")]
    found = []
    for a in appends:
        pattern = os.path.basename(a)[: -len(".bbappend")].replace("%", "*")
        if fnmatch.fnmatchcase(name, pattern):
            found.append(a)
    return found


def find_local(path, d):
    for base in (d.getVar("FILESPATH") or "").split(":"):
        if base and os.path.exists(os.path.join(base, path)):
            return os.path.join(base, path)
    return None


def check_recipe(fn, d, machine):
    rel = os.path.relpath(fn, ROOT)
    pn = d.getVar("PN")
    for key in sorted(d.keys()):
        if key.startswith("__") or d.getVarFlag(key, "python"):
            continue
        try:
            value = d.getVar(key)
        except Exception as e:  # ExpansionError and whatever inline Python raises
            error(f"{rel} [{machine}]: {key} does not expand: {e}")
            continue
        if isinstance(value, str) and not d.getVarFlag(key, "func"):
            for ref in re.findall(r"\$\{([A-Za-z0-9_:-]+)\}", value):
                error(f"{rel} [{machine}]: {key} refers to ${{{ref}}}, which nothing sets")

    for url in (d.getVar("SRC_URI") or "").split():
        if url.startswith("file://"):
            path = url[len("file://"):].split(";")[0]
            if not os.path.isabs(path) and not find_local(path, d):
                error(f"{rel} [{machine}]: {url} is not in FILESPATH")

    wks = d.getVar("WKS_FILE")
    if wks:
        layers = (d.getVar("BBLAYERS") or "").split()
        paths = [p for p in (os.path.join(layer, "wic", wks) for layer in layers) if os.path.exists(p)]
        if not paths:
            error(f"{rel} [{machine}]: WKS_FILE {wks} is in no layer's wic/")
        else:
            text = d.expand(open(paths[0]).read())
            for ref in re.findall(r"\$\{([A-Za-z0-9_:-]+)\}", text):
                error(f"{rel} [{machine}]: {wks} refers to ${{{ref}}}, which the image does not set")
            m = re.search(r'--configfile="?([^"\s]+)', text)
            if m and not any(os.path.exists(os.path.join(layer, "wic", m.group(1))) for layer in layers):
                error(f"{rel} [{machine}]: the wks file's --configfile {m.group(1)} is in no layer's wic/")

    if pn == "branchgate":
        check_daemon_recipe(fn, d, machine)
    if pn == "branchgate-bundle":
        compatible = d.getVar("RAUC_BUNDLE_COMPATIBLE")
        if compatible != expected_compatible(d):
            error(f"{rel} [{machine}]: RAUC_BUNDLE_COMPATIBLE {compatible} is not the daemon's {expected_compatible(d)}")


def expected_compatible(d):
    lib = open(os.path.join(ROOT, "firmware", "update", "src", "lib.rs")).read()
    arch = RUST_ARCH.get(d.getVar("TARGET_ARCH"))
    m = re.search(r'#\[cfg\(target_arch = "%s"\)\]\s*pub const DEFAULT_COMPATIBLE: &str = "([^"]+)"' % arch, lib)
    return m.group(1) if m else None


def check_daemon_recipe(fn, d, machine):
    rel = os.path.relpath(fn, ROOT)
    cargo = open(os.path.join(ROOT, "Cargo.toml")).read()
    m = re.search(r'\[workspace\.package\][^\[]*?\nversion = "([^"]+)"', cargo)
    version = m.group(1) if m else None
    if d.getVar("BRANCHGATE_VERSION") != version:
        error(f"{rel}: BRANCHGATE_VERSION {d.getVar('BRANCHGATE_VERSION')} is not Cargo.toml's {version}")

    for entry in (d.getVar("LIC_FILES_CHKSUM") or "").split():
        path, *params = entry[len("file://"):].split(";")
        params = dict(p.split("=", 1) for p in params)
        lines = open(os.path.join(ROOT, path), "rb").read().splitlines(keepends=True)
        begin, end = int(params.get("beginline", 1)), int(params.get("endline", len(lines)))
        md5 = hashlib.md5(b"".join(lines[begin - 1:end])).hexdigest()
        if md5 != params.get("md5"):
            error(f"{rel}: LIC_FILES_CHKSUM {path} lines {begin}-{end} have md5 {md5}, not {params.get('md5')}")

    compatible = d.getVar("BRANCHGATE_COMPATIBLE")
    if compatible != expected_compatible(d):
        error(f"{rel} [{machine}]: BRANCHGATE_COMPATIBLE {compatible} is not the daemon's DEFAULT_COMPATIBLE {expected_compatible(d)}")

    # The unit's ExecStart against the `run` subcommand of firmware/daemon/src/main.rs.
    unit = open(find_local("branchgate.service", d)).read()
    main = open(os.path.join(ROOT, "firmware", "daemon", "src", "main.rs")).read()
    run = re.search(r"\n    Run \{(.*?)\n    \},", main, re.S)
    exec_start = re.search(r"^ExecStart=(.*)$", unit, re.M)
    if not run or not exec_start:
        error(f"{rel}: cannot find the daemon's `run` arguments or the unit's ExecStart")
        return
    words = exec_start.group(1).split()
    if words[1:2] != ["run"]:
        error(f"{rel}: ExecStart does not call `branchgate run`: {exec_start.group(1)}")
    for flag in (w for w in words if w.startswith("--")):
        if not re.search(r"\n\s+%s: " % flag[2:].replace("-", "_"), run.group(1)):
            error(f"{rel}: ExecStart passes {flag}, which `branchgate run` does not take")
    for placeholder in set(re.findall(r"@([A-Z_]+)@", unit)):
        if f"@{placeholder}@" not in open(fn).read():
            error(f"{rel}: branchgate.service has @{placeholder}@, which do_install does not replace")


def main():
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s: %(message)s")
    with tempfile.TemporaryDirectory(prefix="yocto-parse-") as tmp:
        for machine in MACHINES:
            print(f"MACHINE={machine} DISTRO=branchgate")
            try:
                base = parse_config(machine, tmp)
            except Exception as e:
                if os.environ.get("PARSE_CHECK_DEBUG"):
                    raise
                error(f"configuration for {machine}: {e}")
                continue
            bb.codeparser.parser_cache_init(base.getVar("BB_CACHEDIR"))
            bb.parse.siggen = bb.siggen.init(base)
            base.setVar("__bbclasstype", "recipe")
            recipes, appends = collect_files(base)
            used = set()
            skipped_pns, parsed = set(), []
            for fn in recipes:
                mine = appends_for(fn, appends)
                used.update(mine)
                own = fn.startswith(LAYER + os.sep)
                if not own and not mine:
                    continue
                d = bb.data.createCopy(base)
                d.setVar("__BBAPPEND", " ".join(mine))
                label = os.path.relpath(fn, ROOT) + "".join(" + " + os.path.relpath(a, ROOT) for a in mine)
                try:
                    variants = bb.parse.handle(fn, d)
                except Exception as e:  # ParseError, SkipRecipe misuse, BBHandledException, ...
                    error(f"{label} [{machine}]: {type(e).__name__}: {e}")
                    continue
                rd = variants[""]
                skipped = rd.getVar("__SKIPPED")
                if skipped:
                    print(f"  skip {os.path.relpath(fn, ROOT)}: {skipped}")
                    skipped_pns.add(rd.getVar("PN"))
                    continue
                parsed.append((fn, rd))
                print(f"  ok   {label}")
                check_recipe(fn, rd, machine)
            # What a recipe pulls in must exist for this machine (e.g. no EFI glue on the Pi).
            for fn, rd in parsed:
                wanted = " ".join([rd.getVar("IMAGE_INSTALL") or "", rd.getVar("WKS_FILE_DEPENDS") or "",
                                   rd.getVar("DEPENDS") or "", rd.getVarFlag("do_image_wic", "depends") or ""])
                for name in sorted({w.split(":")[0] for w in wanted.split()} & skipped_pns):
                    error(f"{os.path.relpath(fn, ROOT)} [{machine}]: needs {name}, which is skipped for {machine}")
            for a in appends:
                if a not in used:
                    error(f"{os.path.relpath(a, ROOT)} [{machine}]: no recipe to append to")
    if errors:
        print(f"parse check: {len(errors)} problem(s)")
        return 1
    print("parse check: every recipe and bbappend parsed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
