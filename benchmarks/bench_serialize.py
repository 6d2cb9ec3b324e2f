"""Serialising checkpoint state: our encoder vs. pickle protocol 5, dill and cloudpickle, same objects.

Cases (issue 4, target: ours / pickle <= 1.1):
  array      a float64 array, 256 MiB (``--array-mib 1024`` for 1 GiB)
  dataframe  a pandas DataFrame of mixed columns, ~100 MB (skipped without pandas)
  tuples     a list of 1M small tuples (int, short str, float)
  intstr     a dict of 1M int -> short str
  instances  100k instances of a class defined in __main__ (pickle stores the class by name)
  notebook   notebook code: 300 lambdas, closures and __main__ functions, 2,000 instances of a
             __main__ dataclass holding them (plain pickle cannot; the baseline is dill)

Contenders, interleaved, median of ``--rounds``; every figure is a ratio to the case's baseline:
  pickle            pickle.dumps(protocol=5): everything in band, one bytes object (the baseline)
  pickle-oob        the same with buffer_callback: large buffers out of band, not copied
  ours              resumable_magic.state.serialize.encode_state: large buffers out of band (>= 64 KiB)
  ours+digest       encode_state, then the xxh3-128 digest of the stream and of every buffer
  ours-inband       dumps_state: everything in band (what run.py calls today)
  dill, cloudpickle dill.dumps / cloudpickle.dumps, protocol 5

Loads (second table per case): pickle.loads vs. loads_state / decode_state (buffers handed over as
bytearrays, as the store would read them) and dill.loads.

    .venv/bin/python benchmarks/bench_serialize.py [--cases array,tuples] [--array-mib 1024] [--rounds 5]

Writes ci-artifacts/bench/serialize.json.
"""

from __future__ import annotations

import argparse
import dataclasses
import pickle
import sys
from collections.abc import Callable
from typing import Any

import numpy as np
from _common import GIB, MIB, measure, per_round, print_table, ratio_headline, ratios, versions, write_json

from resumable_magic.state.serialize import (
    buffer_digest,
    decode_state,
    dumps_state,
    encode_state,
    loads_state,
)

try:
    import cloudpickle
except ImportError:  # optional
    cloudpickle = None
import dill

# -- what a notebook defines (this script runs as __main__) -------------------------------------------


class Particle:
    def __init__(self, i: int) -> None:
        self.x, self.v, self.tag = i * 0.5, -i, f"p{i}"


@dataclasses.dataclass
class Trial:
    seed: int
    score: float
    transform: Callable[[float], float]
    history: list[float] = dataclasses.field(default_factory=list)

    def run(self) -> float:
        return self.transform(self.score)


OFFSET = 3.0


def shifted(x: float) -> float:
    return x + OFFSET


def make_scaler(k: float) -> Callable[[float], float]:
    return lambda x: k * x


def notebook_state() -> dict[str, Any]:
    transforms = []
    for i in range(100):
        transforms += [make_scaler(i), lambda x, i=i: x - i, shifted]
    trials = [Trial(i, i / 7, transforms[i % len(transforms)], [i, i + 1.0]) for i in range(2000)]
    return {"transforms": transforms, "trials": trials, "cls": Trial}


def dataframe(rows: int) -> Any:
    import pandas as pd

    rng = np.random.default_rng(1)
    return pd.DataFrame(
        {
            "x": rng.random(rows),
            "y": rng.standard_normal(rows).astype(np.float32),
            "n": rng.integers(0, 1 << 40, rows),
            "flag": rng.random(rows) < 0.5,
            "when": pd.date_range("2020-01-01", periods=rows, freq="s"),
            "cat": pd.Categorical(rng.choice(["red", "green", "blue"], rows)),
            "name": [f"item-{i % 50_000}" for i in range(rows)],
        }
    )


def build(case: str, args: argparse.Namespace) -> tuple[dict[str, Any], str]:
    if case == "array":
        n = args.array_mib * MIB // 8
        return {"weights": np.random.default_rng(0).random(n)}, f"float64 array, {args.array_mib} MiB"
    if case == "dataframe":
        df = dataframe(args.df_rows)
        size = int(df.memory_usage(deep=True).sum())
        return {"df": df}, f"DataFrame {args.df_rows:,} rows x 7 mixed columns, {size / 1e6:.0f} MB in memory"
    if case == "tuples":
        return {"rows": [(i, f"k{i}", i * 0.5) for i in range(1_000_000)]}, "list of 1M (int, str, float)"
    if case == "intstr":
        return {"index": {i: f"k{i}" for i in range(1_000_000)}}, "dict of 1M int -> str"
    if case == "instances":
        return {"particles": [Particle(i) for i in range(100_000)]}, "100k instances of a __main__ class"
    if case == "notebook":
        return notebook_state(), "300 lambdas/closures/functions + 2,000 __main__ dataclass instances"
    raise SystemExit(f"unknown case {case!r}")


def digest_all(encoded: Any) -> list[str]:
    return [buffer_digest(encoded.stream), *(buffer_digest(b) for b in encoded.buffers)]


def dump_contenders(state: dict[str, Any]) -> dict[str, Callable[[], Any]]:
    contenders: dict[str, Callable[[], Any]] = {
        "pickle": lambda: pickle.dumps(state, protocol=5),
        "pickle-oob": lambda: pickle.dumps(state, protocol=5, buffer_callback=list().append),
        "ours": lambda: encode_state(state),
        "ours+digest": lambda: digest_all(encode_state(state)),
        "ours-inband": lambda: dumps_state(state),
        "dill": lambda: dill.dumps(state, protocol=5),
    }
    if cloudpickle is not None:
        contenders["cloudpickle"] = lambda: cloudpickle.dumps(state, protocol=5)
    return contenders


def run_case(case: str, args: argparse.Namespace) -> dict[str, Any]:
    state, what = build(case, args)
    baseline = "dill" if case == "notebook" else "pickle"
    dumps = measure(dump_contenders(state), args.rounds)
    ratios(dumps, baseline, "wall_s")
    ratios(dumps, baseline, "cpu_s")
    encoded = encode_state(state)
    sizes = {"stream_bytes": len(encoded.stream), "buffers": [b.nbytes for b in encoded.buffers]}
    dumps["ours"]["note"] = f"stream {len(encoded.stream) / MIB:.1f} MiB + {len(encoded.buffers)} buffers"
    print_table(f"[{case}] dump: {what}", dumps, baseline)

    # Loads: inputs prepared outside the timing, as the store would hand them over.
    inputs: dict[str, Callable[[], Any]] = {}
    if "error" not in dumps.get("pickle", {"error": 1}):
        in_band = pickle.dumps(state, protocol=5)
        inputs["pickle"] = lambda: pickle.loads(in_band)
    ours_in_band = dumps_state(state)
    inputs["ours-inband"] = lambda: loads_state(ours_in_band)
    stream = encoded.stream
    copies = [bytearray(b) for b in encoded.buffers]
    del encoded
    inputs["ours"] = lambda: decode_state(stream, copies)
    dill_bytes = dill.dumps(state, protocol=5)
    inputs["dill"] = lambda: dill.loads(dill_bytes)
    loads = measure(inputs, args.rounds)
    ratios(loads, baseline if baseline in loads else "ours-inband", "wall_s")
    ratios(loads, baseline if baseline in loads else "ours-inband", "cpu_s")
    print_table(f"[{case}] load", loads, baseline if baseline in loads else "ours-inband")
    return {"what": what, "baseline": baseline, "dump": dumps, "load": loads, "sizes": sizes}


def digest_speed(args: argparse.Namespace) -> dict[str, Any]:
    array = np.random.default_rng(0).random(args.array_mib * MIB // 8)
    view = memoryview(array).cast("B")
    timing = measure({"xxh3_128": lambda: buffer_digest(view)}, max(args.rounds, 5))
    speed = array.nbytes / GIB / timing["xxh3_128"]["wall_s"]
    print(f"\n[digest] buffer_digest (xxh3-128) over {args.array_mib} MiB in place: {speed:.1f} GiB/s")
    return {"bytes": array.nbytes, "seconds": timing["xxh3_128"]["wall_s"], "gib_per_s": speed}


def headline_of(case: str, result: dict[str, Any] | None) -> dict[str, Any]:
    """ours / pickle of one case's dump (target <= 1.1); notebook code has no pickle: ours / dill."""
    figure = f"serialise {case}: ours / {'dill' if case == 'notebook' else 'pickle'}"
    if result is None:
        return ratio_headline(figure, [], baseline="pickle.dumps", note="pandas not installed")
    dumps, baseline = result["dump"], result["baseline"]
    return ratio_headline(
        figure,
        per_round(dumps, "ours", baseline),
        baseline=f"{baseline}.dumps",
        at_most=1.1 if baseline == "pickle" else None,
        note=dumps["ours"].get("error") or f"{result['what']}; cpu {dumps['ours'].get('ratio_cpu', 0):.2f}",
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--cases", default="array,dataframe,tuples,intstr,instances,notebook")
    parser.add_argument("--array-mib", type=int, default=256, help="size of the array case (1024 = 1 GiB)")
    parser.add_argument("--df-rows", type=int, default=2_000_000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--out", default="serialize.json")
    args = parser.parse_args()
    results: dict[str, Any] = {}
    headlines = []
    for case in args.cases.split(","):
        if case == "dataframe":
            try:
                import pandas  # noqa: F401
            except ImportError:
                print(
                    "\n[dataframe] skipped: pandas is not installed (pip install -r benchmarks/requirements.txt)"
                )
                headlines.append(headline_of(case, None))
                continue
        results[case] = run_case(case, args)
        headlines.append(headline_of(case, results[case]))
        sys.stdout.flush()
    results["digest"] = digest_speed(args)
    write_json(
        args.out,
        {
            "args": vars(args),
            "versions": versions("numpy", "dill", "cloudpickle", "pandas"),
            "cases": results,
            "headlines": headlines,
        },
    )


if __name__ == "__main__":
    main()
