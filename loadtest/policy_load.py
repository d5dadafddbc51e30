"""How long a policy directory takes to load as it grows: seconds per descriptor.

Writes one envoyproxy/ratelimit config of N descriptors (each a key, a value and a
limit) for each size, and times ``load_directory`` on it in a fresh interpreter per
checkout: the first load, then the next one, after the first set was dropped (as a
server drops a replaced or rejected set), so the figures of two checkouts come from the
same run::

    .venv/bin/python loadtest/policy_load.py --sizes 25000,50000,100000,200000
    .venv/bin/python loadtest/policy_load.py --trees ../base,.    # before, after

Loading time should grow linearly: the µs per descriptor should stay flat across sizes.
"""

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

_TIMED = """
import json, sys, time
sys.path.insert(0, sys.argv.pop(1))  # the checkout first, before the working directory
from pathlib import Path
from services.catalog.loader import LoadOptions, load_directory
directory = Path(sys.argv[1])
try:
    options = LoadOptions(max_file_bytes=1 << 30)
except TypeError:  # checkouts without a file-size cap
    options = LoadOptions()
started = time.perf_counter()
load_directory(directory, options)  # dropped at once, as a replaced or rejected set is
first = time.perf_counter() - started
started = time.perf_counter()
load_directory(directory, options)
print(json.dumps({"first": first, "reload": time.perf_counter() - started}))
"""


WHAT = ("first load", "the next load")


def write_config(directory: Path, descriptors: int) -> None:
    lines = ["domain: big", "descriptors:"]
    for index in range(descriptors):
        lines += [
            "  - key: user",
            f"    value: u{index}",
            "    rate_limit: {unit: minute, requests_per_unit: 10}",
        ]
    (directory / "big.yaml").write_text("\n".join(lines) + "\n")


def time_load(tree: Path, directory: Path) -> tuple[float, float]:
    done = subprocess.run(
        [sys.executable, "-c", _TIMED, str(tree), str(directory)],
        capture_output=True,
        text=True,
        check=True,
        timeout=600,
    )
    timed = json.loads(done.stdout)
    return float(timed["first"]), float(timed["reload"])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="25000,50000,100000,200000")
    parser.add_argument("--trees", default=".", help="comma-separated checkouts to time")
    args = parser.parse_args()
    trees = [Path(tree).resolve() for tree in args.trees.split(",")]
    heads = [f"{tree.name}: {what}, s (µs/descriptor)" for tree in trees for what in WHAT]
    print("| descriptors | " + " | ".join(heads) + " |")
    print("|---|" + "---|" * len(heads))
    for size in (int(text) for text in args.sizes.split(",")):
        with tempfile.TemporaryDirectory(prefix="policy-load-") as name:
            directory = Path(name)
            write_config(directory, size)
            cells = []
            for tree in trees:
                for seconds in time_load(tree, directory):
                    cells.append(f"{seconds:.2f} ({seconds / size * 1e6:.0f})")
        print(f"| {size:,} | " + " | ".join(cells) + " |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
