#!/usr/bin/env python3
# SPDX-License-Identifier: Apache-2.0
"""Static kernel report: registers, stack, shared and local memory, and tensor-core
instructions of every kernel in a CUDA binary, per architecture, read from the SASS that nvcc
embedded (no GPU needed). Writes a Markdown table.

    python3 scripts/kernel_report.py --binary build/cuda/tests/moe_cuda_tests \
        --out build/cuda/kernel-report.md [--fail-on-spills] [--require-mma REGEX]

Exit status: 0 ok; 1 a gate failed (stack or local memory used = spills, or a kernel matching
--require-mma has no tensor-core instruction); 77 the tools are missing (reported as skipped).
NVIDIA's cuobjdump and c++filt are needed: the toolkit here lacks cuobjdump, so it is looked up
on PATH, in the toolkit, and in the PyPI wheels nvidia-cuda-cuobjdump (nvidia/cu*/bin).
"""
import argparse
import glob
import os
import re
import shutil
import subprocess
import sys
import sysconfig

# Tensor-core opcodes: mma.sync/WMMA (HMMA, IMMA, DMMA, BMMA) and Hopper wgmma (HGMMA, IGMMA,
# QGMMA for fp8). HFMA2.MMA is an ordinary FMA on the MMA pipe, not a tensor-core op.
MMA_OPCODE = re.compile(r"\b(HMMA|IMMA|DMMA|BMMA|HGMMA|IGMMA|QGMMA|BGMMA)\.")


def find_tool(name):
    found = shutil.which(name)
    if found:
        return found
    candidates = [os.path.join(os.environ.get("CUDA_HOME", "/usr/local/cuda"), "bin", name)]
    for site in {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}:
        candidates += glob.glob(os.path.join(site, "nvidia", "*", "bin", name))
        candidates += glob.glob(os.path.join(site, "nvidia", "*", "*", "bin", name))
    for c in candidates:
        if os.path.isfile(c) and os.access(c, os.X_OK):
            return c
    return None


def demangle(names):
    cxxfilt = shutil.which("c++filt")
    if not cxxfilt or not names:
        return {n: n for n in names}
    out = subprocess.run([cxxfilt], input="\n".join(names), capture_output=True, text=True,
                         check=True).stdout.splitlines()
    return dict(zip(names, out))


def resource_usage(cuobjdump, binary):
    """{(arch, mangled): {REG, STACK, SHARED, LOCAL}} from `cuobjdump -res-usage`."""
    text = subprocess.run([cuobjdump, "-res-usage", binary], capture_output=True, text=True,
                          check=True).stdout
    usage, arch, function = {}, None, None
    for line in text.splitlines():
        m = re.match(r"\s*arch = (sm_\w+)", line)
        if m:
            arch = m.group(1)
            continue
        m = re.match(r"\s*Function (\S+):", line)
        if m:
            function = m.group(1)
            continue
        if function and "REG:" in line:
            fields = dict(re.findall(r"(\w+(?:\[\d+\])?):(\d+)", line))
            usage[(arch, function)] = {k: int(fields.get(k, 0)) for k in
                                       ("REG", "STACK", "SHARED", "LOCAL")}
            function = None
    return usage


def mma_counts(cuobjdump, binary):
    """{(arch, mangled): number of tensor-core instructions} from `cuobjdump -sass`."""
    text = subprocess.run([cuobjdump, "-sass", binary], capture_output=True, text=True,
                          check=True).stdout
    counts, arch, function = {}, None, None
    for line in text.splitlines():
        m = re.match(r"\s*code for (sm_\w+)", line)
        if m:
            arch = m.group(1)
            continue
        m = re.match(r"\s*Function : (\S+)", line)
        if m:
            function = m.group(1)
            counts.setdefault((arch, function), 0)
            continue
        if function and MMA_OPCODE.search(line):
            counts[(arch, function)] += 1
    return counts


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--binary", help="executable or object with embedded SASS")
    ap.add_argument("--out", help="Markdown file to write")
    ap.add_argument("--fail-on-spills", action="store_true",
                    help="fail when a kernel uses stack or local memory")
    ap.add_argument("--require-mma", default=None,
                    help="regex of kernel names that must contain tensor-core instructions")
    ap.add_argument("--find-tools", action="store_true", help="only check that cuobjdump exists")
    args = ap.parse_args()

    cuobjdump = find_tool("cuobjdump")
    if args.find_tools:
        print(cuobjdump or "cuobjdump not found")
        return 0 if cuobjdump else 1
    if not cuobjdump:
        print("SKIPPED: cuobjdump not found (pip install nvidia-cuda-cuobjdump)")
        return 77
    if not args.binary:
        ap.error("--binary is required")

    usage = resource_usage(cuobjdump, args.binary)
    mma = mma_counts(cuobjdump, args.binary)
    keys = sorted(set(usage) | set(mma), key=lambda k: (k[1], k[0]))
    names = demangle(sorted({k[1] for k in keys}))

    rows, failures = [], []
    for arch, mangled in keys:
        u = usage.get((arch, mangled), {})
        n_mma = mma.get((arch, mangled), 0)
        name = names[mangled]
        rows.append((name, arch, u.get("REG", "?"), u.get("SHARED", "?"), u.get("STACK", "?"),
                     u.get("LOCAL", "?"), n_mma))
        if args.fail_on_spills and (u.get("STACK", 0) > 0 or u.get("LOCAL", 0) > 0):
            failures.append(f"{name} [{arch}]: stack {u.get('STACK')} B, local {u.get('LOCAL')} B")
        if args.require_mma and re.search(args.require_mma, name) and n_mma == 0:
            failures.append(f"{name} [{arch}]: no tensor-core instruction in its SASS")

    lines = [f"# Kernel report for `{os.path.basename(args.binary)}`", "",
             f"{len({r[0] for r in rows})} kernels, {len(rows)} (kernel, arch) pairs; "
             "stack/local > 0 means register spills; mma = tensor-core instructions in SASS.", "",
             "| kernel | arch | registers | shared B | stack B | local B | mma |",
             "|---|---|---:|---:|---:|---:|---:|"]
    lines += [f"| `{r[0]}` | {r[1]} | {r[2]} | {r[3]} | {r[4]} | {r[5]} | {r[6]} |" for r in rows]
    report = "\n".join(lines) + "\n"
    if args.out:
        with open(args.out, "w") as f:
            f.write(report)
    print(report)
    if not rows:
        print("FAILED: no kernels found in", args.binary)
        return 1
    for f in failures:
        print("FAILED:", f)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
