#!/usr/bin/env python3
"""Finds import cycles between the modules of each crate under crates/.

A module is a file (`a.rs`, or `a/mod.rs` for a module with children). Module A
depends on module B when A's code names something in B: `crate::b::X`,
`super::X`, `self::b::X`, or `b::X` for a child b of A, in a `use` or inline.
The crate root (lib.rs, main.rs) is the crate's facade and is left out: every
module may name what it re-exports. Test modules (`#[cfg(test)] mod tests` at the
bottom of a file) are left out too: a test names what it tests.

Usage: scripts/module_cycles.py [CRATES_DIR]; prints each cycle and exits 1 when
there is one.
"""

import re
import sys
from pathlib import Path

IDENT = r"[A-Za-z_][A-Za-z0-9_]*"
PATH = re.compile(rf"\b(?:{IDENT}::)+(?:{IDENT}|\{{)")
USE = re.compile(r"\buse\s+([^;]+);", re.S)


def modules(src: Path) -> dict:
    """Module path (a tuple of names; () is the root) -> its file."""
    out = {}
    for f in sorted(src.rglob("*.rs")):
        rel = f.relative_to(src).with_suffix("").parts
        if rel in (("lib",), ("main",)):
            out[()] = f
        elif rel and rel[0] == "bin":
            continue  # other binaries are crates of their own
        elif rel[-1] == "mod":
            out[rel[:-1]] = f
        else:
            out[rel] = f
    return out


def code(f: Path) -> str:
    text = f.read_text()
    cut = re.search(r"#\[cfg\(test\)\]\s*mod tests\b", text)
    if cut:
        text = text[: cut.start()]
    # Comments and strings name modules too ("see crate::x") without depending on them.
    text = re.sub(r"//[^\n]*", "", text)
    text = re.sub(r'"(?:\\.|[^"\\])*"', '""', text)
    return text


def expand(tree: str) -> list:
    """The paths of a use tree: `a::{b, c::{d, e}}` -> a::b, a::c::d, a::c::e."""
    tree = re.sub(r"\s+", "", tree)
    i = tree.find("{")
    if i < 0:
        return [tree]
    prefix, inner = tree[:i], tree[i + 1 : tree.rfind("}")]
    parts, depth, start = [], 0, 0
    for j, c in enumerate(inner):
        if c == "{":
            depth += 1
        elif c == "}":
            depth -= 1
        elif c == "," and depth == 0:
            parts.append(inner[start:j])
            start = j + 1
    parts.append(inner[start:])
    return [p for part in parts if part for p in expand(prefix + part)]


def references(text: str) -> list:
    paths = []
    for m in USE.finditer(text):
        paths.extend(expand(m.group(1)))
    rest = USE.sub("", text)
    paths.extend(m.group(0).rstrip("{").rstrip(":") for m in PATH.finditer(rest))
    return [p.split("::") for p in paths]


def resolve(module: tuple, segs: list, mods: dict):
    if not segs:
        return None
    if segs[0] == "crate":
        base, rest = (), segs[1:]
    elif segs[0] in ("super", "self"):
        base = module
        while segs and segs[0] in ("super", "self"):
            if segs[0] == "super":
                base = base[:-1]
            segs = segs[1:]
        rest = segs
    elif module + (segs[0],) in mods:
        base, rest = module, segs
    else:
        return None  # another crate, a type or a local name
    target = base
    for s in rest:
        if target + (s,) in mods:
            target = target + (s,)
        else:
            break
    return target


def cycles(src: Path) -> list:
    mods = modules(src)
    edges = {m: set() for m in mods if m != ()}
    for m in edges:
        for segs in references(code(mods[m])):
            t = resolve(m, segs, mods)
            if t is not None and t != () and t != m:
                edges[m].add(t)
    # Tarjan's strongly connected components; any with more than one module is a cycle.
    index, low, stack, on, found = {}, {}, [], set(), []
    counter = [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in sorted(edges[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(sorted("::".join(c) for c in comp))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return found


def main() -> int:
    root = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).resolve().parent.parent / "crates"
    bad = 0
    for src in sorted(root.glob("*/src")):
        for comp in cycles(src):
            print(f"{src.parent.name}: {' <-> '.join(comp)}")
            bad += 1
    print(f"{bad} module cycle(s) in {root}")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
