#!/usr/bin/env python3
# SPDX-License-Identifier: GPL-2.0
"""Summarises the KFlex-heap run of the upstream arena selftests.

arena_report.py RUN_DIR TAG -- reads RUN_DIR/TAG-kflex-arena.log (test_progs
output with kflex_arena_shim.so preloaded), RUN_DIR/TAG-shim.log (the maps the
shim converted) and RUN_DIR/TAG-kflex-progs.txt (the kernel's "kflex: prog=..."
lines), prints Markdown.
"""
import pathlib
import re
import sys

sys.path.insert(0, str(pathlib.Path(__file__).parent))
from compare import parse_progs  # noqa: E402

run, tag = pathlib.Path(sys.argv[1]), sys.argv[2]
log = run / f"{tag}-kflex-arena.log"
res = parse_progs(log)
text = log.read_text(errors="replace") if log.exists() else ""
shim_log = run / f"{tag}-shim.log"
if shim_log.exists():
    text += shim_log.read_text(errors="replace")
shim = sorted(set(re.findall(
    r"kflex-shim: arena map '([^']*)' \((\d+) pages at (0x[0-9a-f]+)\) created as a KFlex heap of (\d+) pages at (0x[0-9a-f]+): (\w+)",
    text)))
kprogs = (run / f"{tag}-kflex-progs.txt")
kp = kprogs.read_text(errors="replace").splitlines() if kprogs.exists() else []
print("## Upstream arena selftests on KFlex heaps")
print()
print("`arena_htab`, `arena_list`, `arena_atomics` and `verifier_arena*` run unchanged with")
print("`tests/selftests/kflex_arena_shim.so` preloaded: every `BPF_MAP_TYPE_ARENA` map is created with")
print("`BPF_F_KFLEX`, its size rounded up to a power of two of at least 16 pages (KFlex heaps are")
print("power-of-two sized, 64 KiB ... 256 GiB) and its address (`map_extra`) aligned down to that size;")
print("libbpf's mmap of the map is widened to the whole heap. One test_progs process per test.")
print()
tests = {}
for n, r in res.items():
    tests.setdefault(n.split("/", 1)[0], []).append((n, r))
# A test_progs process that died (a signal) or was stopped by the time limit
# leaves no result line: its "#RUN <test>: exit N, S s" line tells.
crashed = {}
for m in re.finditer(r"^#RUN (\S+): exit (\d+), (\d+) s", text, re.M):
    name, code = m.group(1), int(m.group(2))
    if code != 0 and name not in tests:
        crashed[name] = "killed by signal %d" % (code - 128) if code > 128 else (
            "stopped by the time limit" if code == 124 else "exit %d" % code)
        res[name] = "FAIL"
        tests[name] = [(name, "FAIL")]
print("| test | pass | fail | skip |")
print("|---|---|---|---|")
for t in sorted(tests):
    rs = [r for _, r in tests[t]]
    print(f"| `{t}` | {rs.count('OK')} | {rs.count('FAIL')} | {rs.count('SKIP')} |")
print()
fails = [n for n, r in sorted(res.items()) if r == "FAIL"]
print(f"Failing ({len(fails)}):" + ("" if fails else " none."))
for n in fails:
    print(f"- `{n}`" + (f" (no result: test_progs {crashed[n]})" if n in crashed else ""))
print()
print(f"Arena maps converted by the shim ({len(shim)} distinct):")
for name, pages, addr, npages, naddr, how in shim:
    print(f"- `{name}`: {pages} pages at {addr} -> {npages} pages at {naddr}: {how}")
print()
names = sorted(set(re.findall(r"prog=(\S+)", "\n".join(kp))))
print(f"Programs the kernel treated as KFlex programs (`kflex: prog=... range_analysis_call=` lines): {len(kp)} lines, "
      f"{len(names)} distinct names" + (": " + ", ".join(f"`{n}`" for n in names[:60]) if names else "."))
