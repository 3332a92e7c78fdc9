#!/usr/bin/env python3
"""Self instruction counts per function from a callgrind output file, divided by
a unit count (relayed messages): `callgrind_top.py FILE UNITS [N]`. Written here
because callgrind_annotate 3.19 folds a Rust binary's threads into one frame."""
import collections
import re
import sys


def main():
    path, units = sys.argv[1], int(sys.argv[2])
    top = int(sys.argv[3]) if len(sys.argv) > 3 else 40
    names, cost = {}, collections.Counter()
    fn, skip = None, False
    pat = re.compile(r"^(c?fn)=\((\d+)\)(?: (.*))?$")
    for line in open(path, errors="replace"):
        line = line.rstrip("\n")
        m = pat.match(line)
        if m:
            kind, ident, name = m.groups()
            if name:
                names[ident] = name
            if kind == "fn":
                fn = ident
            continue
        if line.startswith("calls="):
            skip = True
            continue
        if line[:1].isdigit() or line[:1] in "+-*":
            if skip:
                skip = False
                continue
            parts = line.split()
            if fn is not None and len(parts) >= 2:
                cost[fn] += int(parts[1])
    total = sum(cost.values())
    print(f"total {total / units:,.0f} instructions per unit")
    for ident, c in cost.most_common(top):
        print(f"{c / units:10,.0f} {100 * c / total:5.1f}%  {names.get(ident, ident)[:150]}")


if __name__ == "__main__":
    main()
