"""The property-based probes of every reader and of the public API, run long.

``make test`` runs ``tests/reliability/test_fuzz.py`` with a few hundred examples a
reader (hypothesis profile ``default``); this runs the same probes with the ``long``
profile (5,000 examples a reader, fewer where an example runs a model) and reports
each probe's outcome and seconds.

    python benchmarks/fuzz.py [--profile long] [-k PATTERN]
        [--out benchmarks/results/fuzz.json]

Prints a table and writes JSON. A failure prints hypothesis' smallest failing example
(and a ``@reproduce_failure`` blob) above the table.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import xml.etree.ElementTree as ET

import harness

ROOT = harness.ROOT


def main() -> None:
    parser = harness.arguments(__doc__, "fuzz", threads=None)
    parser.add_argument("--profile", default="long")
    parser.add_argument("-k", default=None, help="only the probes whose name matches")
    args = parser.parse_args()

    junit = args.out.with_suffix(".xml")
    junit.parent.mkdir(parents=True, exist_ok=True)
    cmd = [
        sys.executable,
        "-m",
        "pytest",
        str(ROOT / "tests/reliability/test_fuzz.py"),
        "--hypothesis-show-statistics",
        f"--junitxml={junit}",
        "-q",
        "-p",
        "no:cacheprovider",
    ]
    if args.k:
        cmd += ["-k", args.k]
    t0 = time.perf_counter()
    env = {**os.environ, "HYPOTHESIS_PROFILE": args.profile}  # read by tests/conftest.py
    code = subprocess.run(cmd, cwd=ROOT, env=env).returncode
    total = time.perf_counter() - t0
    rows = []
    for case in ET.parse(junit).getroot().iter("testcase"):
        failed = case.find("failure") is not None or case.find("error") is not None
        outcome = "failed" if failed else "skipped" if case.find("skipped") is not None else "ok"
        rows.append(
            {"probe": case.get("name"), "outcome": outcome, "seconds": float(case.get("time"))}
        )
    junit.unlink()
    print(f"\nprofile {args.profile}; {harness.machine_line()}")
    table = [[r["probe"], r["outcome"], r["seconds"]] for r in rows]
    harness.print_table(["probe", "outcome", "seconds"], table, digits=1)
    harness.write_report(args.out, {"profile": args.profile, "seconds": total, "rows": rows})
    sys.exit(code)


if __name__ == "__main__":
    main()
