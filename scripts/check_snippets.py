#!/usr/bin/env python3
# SPDX-License-Identifier: Apache-2.0
"""Checks that code shown in Markdown docs is cut from compiled sources.

A fenced block preceded by `<!-- snippet: PATH#NAME ... -->` must equal the concatenation of
the regions between `// [snippet NAME]` and `// [end snippet]` in PATH (each region dedented by
its first line's indentation, joined as they appear). Usage: check_snippets.py ROOT FILE.md...
"""
import re
import sys
from pathlib import Path

MARK = re.compile(r"<!-- snippet: (\S+)#(\S+)")


def regions(source, name):
    out, inside = [], False
    for line in source.splitlines():
        stripped = line.strip()
        if stripped == f"// [snippet {name}]":
            inside = True
            continue
        if stripped == "// [end snippet]":
            inside = False
            continue
        if inside:
            out.append(line)
    return out


def main():
    root = Path(sys.argv[1])
    failures, checked = 0, 0
    for md in sys.argv[2:]:
        lines = (root / md).read_text().splitlines()
        for i, line in enumerate(lines):
            m = MARK.search(line)
            if not m:
                continue
            path, name = m.groups()
            assert lines[i + 1].startswith("```"), f"{md}:{i + 2}: expected a code fence"
            end = next(j for j in range(i + 2, len(lines)) if lines[j].startswith("```"))
            shown = lines[i + 2:end]
            want = regions((root / path).read_text(), name)
            checked += 1
            if [l.rstrip() for l in shown] != [l.rstrip() for l in want]:
                failures += 1
                print(f"{md}:{i + 1}: snippet differs from {path}#{name}")
                for a, b in zip(shown + [""] * len(want), want + [""] * len(shown)):
                    if a.rstrip() != b.rstrip():
                        print(f"  doc:    {a}\n  source: {b}")
                        break
    print(f"{checked} snippets checked, {failures} differ")
    return 1 if failures or checked == 0 else 0


if __name__ == "__main__":
    sys.exit(main())
