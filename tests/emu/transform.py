#!/usr/bin/env python3
# SPDX-License-Identifier: Apache-2.0
"""Copies CUDA sources into a tree that g++ compiles against moe_emu (tests/emu/include).

Three rewrites, nothing else changes:
  kernel<<<grid, block[, smem[, stream]]>>>(args)
      -> ::moe_emu::launch([=](auto&&... a) { kernel(a...); }, grid, block[, smem[, stream]])(args)
      (a generic lambda, so that template arguments are deduced from the call as with <<<>>>;
      capturing by copy, since a CUDA graph replays the launch after the launching frame is
      gone — `auto const k = kernel<P>; k<<<...>>>` names a local)
  extern __shared__ [__align__(n)] T name[];
      -> T* const name = static_cast<T*>(::moe_emu::dynamic_smem());
  __shared__ [__align__(n)] T a[m], b;   (a statement starting its line)
      -> auto& a = ::moe_emu::static_shared<T[(m)], n or 16>([] {}); auto& b = ...;
      (storage the emulator refills with 0xff bytes in every block: the lambda's type, unique
      to the declaration and to the kernel's instantiation, keeps the copies apart)

usage: transform.py OUT_DIR ROOT FILE...
  FILE relative to ROOT, written to OUT_DIR/FILE (a .cu file to OUT_DIR/FILE.cpp, for g++)
"""
import os
import re
import sys

EXTERN_SHARED = re.compile(
    r"extern\s+__shared__\s+(?:(?:__align__|alignas)\s*\(\s*\d+\s*\)\s+)?"
    r"([A-Za-z_][\w:\s]*?)\s+(\w+)\s*\[\s*\]\s*;")


STATIC_SHARED = re.compile(r"^([ \t]*)__shared__\s+([^;]*);", re.M)
DECLARATOR = re.compile(r"^(?:(?P<type>.*\S)\s+)?(?P<name>[A-Za-z_]\w*)\s*"
                        r"(?P<dims>(?:\[[^\[\]]*\]\s*)*)$", re.S)


def split_top_level(text):
    """Splits a declarator list at the commas outside brackets (template angle brackets count
    only outside [], () and {}, where < and > are operators)."""
    parts, depth, angle, start = [], 0, 0, 0
    for i, c in enumerate(text):
        if c in "[({":
            depth += 1
        elif c in "])}":
            depth -= 1
        elif c == "<" and depth == 0:
            angle += 1
        elif c == ">" and depth == 0:
            angle -= 1
        elif c == "," and depth == 0 and angle == 0:
            parts.append(text[start:i])
            start = i + 1
    parts.append(text[start:])
    return [p.strip() for p in parts]


def static_shared(m):
    indent, body = m.group(1), m.group(2)
    body = re.sub(r"//[^\n]*", "", body).strip()  # comments between declarators
    align = re.match(r"(?:__align__|alignas)\s*\(\s*(\d+)\s*\)\s+", body)
    if align:
        body = body[align.end():]
    decls = split_top_level(body)
    first = DECLARATOR.match(decls[0])
    if not first or not first.group("type"):
        raise ValueError("cannot read the __shared__ declaration %r" % m.group(0))
    base = first.group("type")
    if len(decls) > 1 and base.rstrip()[-1] in "*&":
        raise ValueError("a pointer or reference type shared by several declarators: %r" %
                         m.group(0))
    out = []
    for i, d in enumerate(decls):
        dm = DECLARATOR.match(d)
        if not dm or (i > 0 and dm.group("type")):
            raise ValueError("cannot read the __shared__ declaration %r" % m.group(0))
        dims = "".join("[(%s)]" % e.strip() for e in re.findall(r"\[([^\[\]]*)\]", dm.group("dims")))
        out.append("auto& %s = ::moe_emu::static_shared<%s%s, %s>([] {});" %
                   (dm.group("name"), base, dims, align.group(1) if align else "16"))
    return indent + " ".join(out) + "\n" * m.group(0).count("\n")  # keep the line numbers


def check_no_other_shared(src):
    """Every __shared__ outside comments must be one the rewrites handled."""
    for n, line in enumerate(src.split("\n"), 1):
        code = line.split("//")[0]
        if "__shared__" in code:
            raise ValueError("line %d: a __shared__ declaration transform.py cannot rewrite: %r" %
                             (n, line.strip()))


def kernel_start(src, end):
    """Index where the kernel expression that ends at `end` (exclusive) begins."""
    k = end
    while True:
        while k > 0 and src[k - 1].isspace():
            k -= 1
        if k > 0 and src[k - 1] == ">":  # template arguments: skip the balanced <...>
            depth = 0
            k -= 1
            while k >= 0:
                c = src[k]
                if c == ">":
                    depth += 1
                elif c == "<":
                    depth -= 1
                    if depth == 0:
                        break
                k -= 1
            if k < 0:
                raise ValueError("unbalanced template arguments before <<<")
            while k > 0 and src[k - 1].isspace():
                k -= 1
        m = k
        while m > 0 and (src[m - 1].isalnum() or src[m - 1] == "_"):
            m -= 1
        if m == k:
            raise ValueError("no kernel name before <<<: %r" % src[max(0, end - 60):end + 3])
        k = m
        if src[k - 2:k] == "::":
            k -= 2
            if k == 0 or not (src[k - 1].isalnum() or src[k - 1] in "_>"):
                return k  # a leading ::
            continue
        return k


def rewrite(src):
    src = EXTERN_SHARED.sub(
        lambda m: "%s* const %s = static_cast<%s*>(::moe_emu::dynamic_smem());" %
        (m.group(1).strip(), m.group(2), m.group(1).strip()), src)
    src = STATIC_SHARED.sub(static_shared, src)
    check_no_other_shared(src)
    out = []
    pos = 0
    while True:
        j = src.find("<<<", pos)
        if j < 0:
            break
        close = src.find(">>>", j)
        if close < 0:
            raise ValueError("<<< without >>>")
        start = kernel_start(src, j)
        if start < pos:
            raise ValueError("overlapping launches")
        out.append(src[pos:start])
        kernel = src[start:j].strip()
        out.append("::moe_emu::launch([=](auto&&... moe_emu_args) { %s(moe_emu_args...); }, %s)" %
                   (kernel, src[j + 3:close].strip()))
        pos = close + 3
    out.append(src[pos:])
    return "".join(out)


def main():
    out_dir, root, files = sys.argv[1], sys.argv[2], sys.argv[3:]
    for rel in files:
        with open(os.path.join(root, rel), encoding="utf-8") as f:
            text = f.read()
        new = rewrite(text)
        dst = os.path.join(out_dir, rel + (".cpp" if rel.endswith(".cu") else ""))
        os.makedirs(os.path.dirname(dst), exist_ok=True)
        old = None
        if os.path.exists(dst):
            with open(dst, encoding="utf-8") as f:
                old = f.read()
        if old != new:  # keep timestamps of unchanged files (no needless rebuilds)
            with open(dst, "w", encoding="utf-8") as f:
                f.write(new)


if __name__ == "__main__":
    main()
