#!/usr/bin/env python3
# SPDX-License-Identifier: GPL-2.0
"""Compares BPF selftest logs of two kernels (ours, and the unpatched base).

compare.py OURS_DIR BASE_DIR GROUPS OUT_MD

OURS_DIR/BASE_DIR are run directories of tests/selftests/guest.sh (files
<tag>-verifier.log, <tag>-progs.log, optional <tag>-kflex-arena.log). Results
are compared per subtest (a test without subtests counts as one): per group
passed/failed/skipped on each kernel, and the lists of tests passing on base
and failing (or missing) on ours -- the regressions -- and the reverse.
Writes a Markdown report to OUT_MD, prints the table, and exits 1 when there
is a regression.
"""
import fnmatch
import pathlib
import re
import sys

PROG_RE = re.compile(r"^#(\d+)(?:/(\d+))?\s+(\S.*?):(OK|SKIP|FAIL)(?: \(SKIP: \d+/\d+\))?\s*$")
TIMEOUT_RE = re.compile(r"^#TIMEOUT (\S+):FAIL")
VERIFIER_RE = re.compile(r"^#(\d+/[pu]) (.*?) ?(OK|FAIL|SKIP)\b")


def parse_progs(path):
    """Returns {name: result} with name 'test' or 'test/subtest'."""
    res = {}
    tests_with_subtests = set()
    if not path.exists():
        return res
    for line in path.read_text(errors="replace").splitlines():
        m = TIMEOUT_RE.match(line)
        if m:
            res[m.group(1)] = "FAIL"
            continue
        m = PROG_RE.match(line)
        if not m:
            continue
        name, result = m.group(3), m.group(4)
        if m.group(2):
            res[name] = result
            tests_with_subtests.add(name.split("/", 1)[0])
        else:
            res.setdefault("\0" + name, result)
    out = {}
    for k, v in res.items():
        if k.startswith("\0"):
            t = k[1:]
            # A test with subtests is counted by its subtests; its own line
            # counts only when it failed outside them.
            if t in tests_with_subtests:
                if v == "FAIL" and not any(
                    n.startswith(t + "/") and r == "FAIL" for n, r in res.items()
                ):
                    out[t + "/(test)"] = "FAIL"
                continue
            out[t] = v
        else:
            out[k] = v
    return out


def parse_verifier(path):
    res = {}
    summary = None
    if not path.exists():
        return res, summary
    for line in path.read_text(errors="replace").splitlines():
        m = VERIFIER_RE.match(line)
        if m:
            res["#%s %s" % (m.group(1), m.group(2))] = m.group(3)
        if line.startswith("Summary:"):
            summary = line.strip()
    return res, summary


def group_of(name, groups):
    test = name.split("/", 1)[0]
    for g in groups:
        if fnmatch.fnmatchcase(test, g):
            return g
    return "other"


def counts(res, names):
    c = {"OK": 0, "FAIL": 0, "SKIP": 0}
    for n in names:
        r = res.get(n)
        if r is not None:
            c[r] += 1
    return c


def main():
    ours_dir, base_dir = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2])
    groups = sys.argv[3].split()
    out_md = pathlib.Path(sys.argv[4])
    ours_tag, base_tag = ours_dir.name, base_dir.name
    lines = []

    def w(s=""):
        lines.append(s)

    regressions = 0
    w("## test_verifier")
    w()
    ov, osum = parse_verifier(ours_dir / f"{ours_tag}-verifier.log")
    bv, bsum = parse_verifier(base_dir / f"{base_tag}-verifier.log")
    w(f"- ours ({ours_tag}): `{osum or 'no summary line (crashed?)'}`")
    w(f"- base ({base_tag}): `{bsum or 'no summary line (crashed?)'}`")
    vreg = sorted(n for n, r in bv.items() if r == "OK" and ov.get(n) != "OK")
    vimp = sorted(n for n, r in ov.items() if r == "OK" and bv.get(n) != "OK")
    w(f"- passing on base, not on ours: {len(vreg)}" + "".join(f"\n  - `{n}`: {ov.get(n, 'missing')}" for n in vreg))
    w(f"- passing on ours, not on base: {len(vimp)}" + "".join(f"\n  - `{n}`: {bv.get(n, 'missing')}" for n in vimp))
    both = sorted(n for n, r in ov.items() if r == "FAIL" and bv.get(n) == "FAIL")
    w(f"- failing on both: {len(both)}" + "".join(f"\n  - `{n}`" for n in both))
    regressions += len(vreg)
    if osum is None and bsum is not None:
        regressions += 1

    op = parse_progs(ours_dir / f"{ours_tag}-progs.log")
    bp = parse_progs(base_dir / f"{base_tag}-progs.log")
    names = sorted(set(op) | set(bp))
    w()
    w("## test_progs, per group (subtests; a test without subtests counts as one)")
    w()
    w("| group | ours: pass / fail / skip | base: pass / fail / skip | pass on base, not on ours | pass on ours, not on base |")
    w("|---|---|---|---|---|")
    tot = {"o": {"OK": 0, "FAIL": 0, "SKIP": 0}, "b": {"OK": 0, "FAIL": 0, "SKIP": 0}, "r": 0, "i": 0}
    reg_list, imp_list = [], []
    for g in groups + ["other"]:
        gn = [n for n in names if group_of(n, groups) == g]
        if not gn:
            continue
        oc, bc = counts(op, gn), counts(bp, gn)
        reg = [n for n in gn if bp.get(n) == "OK" and op.get(n) != "OK"]
        imp = [n for n in gn if op.get(n) == "OK" and bp.get(n) != "OK"]
        reg_list += reg
        imp_list += imp
        for k in oc:
            tot["o"][k] += oc[k]
            tot["b"][k] += bc[k]
        tot["r"] += len(reg)
        tot["i"] += len(imp)
        w(f"| `{g}` | {oc['OK']} / {oc['FAIL']} / {oc['SKIP']} | {bc['OK']} / {bc['FAIL']} / {bc['SKIP']} | {len(reg)} | {len(imp)} |")
    o, b = tot["o"], tot["b"]
    w(f"| **total** | {o['OK']} / {o['FAIL']} / {o['SKIP']} | {b['OK']} / {b['FAIL']} / {b['SKIP']} | {tot['r']} | {tot['i']} |")
    regressions += tot["r"]
    w()
    w(f"Passing on base, failing or missing on ours ({len(reg_list)}):" + ("" if reg_list else " none."))
    for n in reg_list:
        w(f"- `{n}`: {op.get(n, 'missing')}")
    w()
    w(f"Passing on ours, failing or missing on base ({len(imp_list)}):" + ("" if imp_list else " none."))
    for n in imp_list:
        w(f"- `{n}`: {bp.get(n, 'missing')}")
    w()
    fails = sorted(n for n in names if op.get(n) == "FAIL" and bp.get(n) == "FAIL")
    w(f"Failing on both ({len(fails)}):")
    for n in fails:
        w(f"- `{n}`")

    out_md.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    print(f"\nregressions (pass on base, not on ours): {regressions}")
    return 1 if regressions else 0


if __name__ == "__main__":
    sys.exit(main())
