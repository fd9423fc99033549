"""What the Python tool's containment costs: one sandboxed run against a bare `python -I -c` of
the same code, alternating within one run; medians and the ratio.

    python bench/sandbox_overhead.py --reps 15
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time

CASES = {
    "print": "print(sum(range(1000)))",
    "numpy": "import numpy as np\nprint(np.arange(10).sum())",
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--reps", type=int, default=15)
    args = ap.parse_args()
    from twofiles.tools.python import PythonSandbox

    sandbox = PythonSandbox()
    print("| code | bare python ms (median) | sandboxed ms (median) | ratio |")
    print("| --- | --- | --- | --- |")
    for name, code in CASES.items():
        bare, boxed = [], []
        for rep in range(args.reps):
            for mode in ("bare", "boxed") if rep % 2 == 0 else ("boxed", "bare"):
                t0 = time.perf_counter()
                if mode == "bare":
                    with tempfile.TemporaryDirectory() as d:
                        subprocess.run(
                            [sys.executable, "-I", "-c", code],
                            cwd=d,
                            check=True,
                            capture_output=True,
                        )
                    bare.append(time.perf_counter() - t0)
                else:
                    result = sandbox.run({"code": code})
                    assert not result.error, result.content
                    boxed.append(time.perf_counter() - t0)
        b, s = statistics.median(bare) * 1000, statistics.median(boxed) * 1000
        print(f"| {name} | {b:.0f} | {s:.0f} | {s / b:.2f} |")


if __name__ == "__main__":
    main()
