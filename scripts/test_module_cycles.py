"""No module of a crate under crates/ depends on another that depends on it back
(scripts/module_cycles.py says how dependencies are read). Run by scripts/test:

    .venv/bin/python -m unittest discover -s scripts -p 'test_*.py'
"""

import os
import sys
import tempfile
import unittest
from pathlib import Path

sys.path.insert(0, os.path.dirname(__file__))
import module_cycles  # noqa: E402

CRATES = Path(__file__).resolve().parent.parent / "crates"

def found():
    return {
        (src.parent.name, tuple(comp))
        for src in sorted(CRATES.glob("*/src"))
        for comp in module_cycles.cycles(src)
    }


class NoModuleCycles(unittest.TestCase):
    def test_no_module_depends_on_one_that_depends_on_it(self):
        self.assertEqual(found(), set())

    def test_finds_a_cycle_through_super_and_a_child(self):
        with tempfile.TemporaryDirectory() as d:
            src = Path(d, "src")
            (src / "a").mkdir(parents=True)
            (src / "lib.rs").write_text("pub mod a;\npub mod b;\n")
            (src / "a" / "mod.rs").write_text("mod c;\npub fn f() { c::g() }\n")
            (src / "a" / "c.rs").write_text("pub fn g() { super::h() }\n")
            (src / "b.rs").write_text(
                "use crate::a::f;\n// crate::a::c in a comment is no dependency\n"
                '#[cfg(test)]\nmod tests { use crate::a::c::g; }\n'
            )
            self.assertEqual(module_cycles.cycles(src), [["a", "a::c"]])
            (src / "a" / "c.rs").write_text("pub fn g() {}\n")
            self.assertEqual(module_cycles.cycles(src), [])
            (src / "a" / "c.rs").write_text("use crate::{b::{self, x}, y};\n")
            (src / "b.rs").write_text("pub fn x() { crate::a::f() }\n")
            self.assertEqual(module_cycles.cycles(src), [["a", "a::c", "b"]])


if __name__ == "__main__":
    unittest.main()
