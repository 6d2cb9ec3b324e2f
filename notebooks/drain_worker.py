"""A worker that drains a work list and survives `kill -9`: run it, kill it, run it again.

    python notebooks/drain_worker.py --items 2000 --dir /tmp/ck &
    sleep 2; kill -9 $!
    python notebooks/drain_worker.py --items 2000 --dir /tmp/ck      # resumes, then finishes

No IPython involved: `Resumable` is the plain-Python core under the %%resumable magic.
"""

from __future__ import annotations

import argparse
import hashlib
import time

from resumable_magic import Resumable


def work(item: int) -> str:
    """Stand-in for real work (an API call, a simulation step): slow, deterministic."""
    time.sleep(0.001)
    return hashlib.sha256(str(item).encode()).hexdigest()[:12]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=2000)
    parser.add_argument("--dir", default=".resumable")
    parser.add_argument("--every", default="5s")
    parser.add_argument("--log", help="append each processed item here (to count redone work)")
    args = parser.parse_args()

    state = {"todo": list(range(args.items)), "results": {}}
    with Resumable("drain-worker", state, dir=args.dir, every=args.every) as run:
        while run.tick() and state["todo"]:
            item = state["todo"].pop()
            state["results"][item] = work(item)
            if args.log:
                with open(args.log, "a") as log:
                    log.write(f"{item}\n")

    summary = hashlib.sha256(repr(sorted(state["results"].items())).encode()).hexdigest()[:16]
    print(f"processed {len(state['results'])} items, digest {summary}")


if __name__ == "__main__":
    main()
