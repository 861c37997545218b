"""`python -m bench NAME [args]`: run the benchmark module `bench/NAME.py` as its own command (its `--help` says
what it measures); `python -m bench` alone lists the names."""

from __future__ import annotations

import pkgutil
import runpy
import sys
from pathlib import Path


def names() -> list[str]:
    """The benchmarks: every module of this package but the package's own."""
    here = Path(__file__).parent
    return sorted(m.name for m in pkgutil.iter_modules([str(here)]) if not m.name.startswith("_"))


def main(argv: list[str]) -> int:
    if not argv or argv[0] in ("-h", "--help"):
        print("usage: python -m bench NAME [args]  (NAME --help for its own)\n\n" + "\n".join(names()))
        return 0 if argv else 2
    name, rest = argv[0], argv[1:]
    if name not in names():
        print(f"python -m bench: no benchmark named {name!r}; one of: {', '.join(names())}", file=sys.stderr)
        return 2
    sys.argv = [f"python -m bench {name}", *rest]
    runpy.run_module(f"bench.{name}", run_name="__main__", alter_sys=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
