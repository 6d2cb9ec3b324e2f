"""One checkpoint of the same state to disk: resumable_magic vs. the alternatives a notebook user has.

Contenders, interleaved, median of ``--rounds``, each to a new file or folder on the same disk:
  raw write        the bytes pickle would write (prepared beforehand), os.write + fsync + rename +
                   directory fsync: the disk's own cost (a baseline)
  pickle           hand-written: pickle.dump(protocol=5) to work.pickle.tmp, fsync, rename, directory
                   fsync (the baseline every ratio is taken against)
  ours             the plain API, resumable_magic.Resumable: opening the run and its first checkpoint
                   (lease, serialise, blob, manifest, all fsynced), as run.py does it today
  ours-encode-blobs  a prototype of the store wired to encode_state (not yet in store.py): the stream
                   and each out-of-band buffer as its own content-addressed blob, tmp+fsync+rename
  ours-unchanged   the same prototype when the buffers did not change since the last checkpoint:
                   only the digests are computed and the small stream written
  dill.dump_session  dill.dump_module of __main__ holding the state, then fsync
  %store           IPython's StoreMagics (in-process shell, pickleshare, protocol 2; no fsync)
  kishu            Kishu's checkpoint step (SaveVariablesCheckpointAction: dill + SQLite insert and
                   commit), without its per-cell planning and Jupyter hooks, which need a live server
  loopz            loopz.tracker.save_state (per-variable pickle, numpy copied first; no fsync)

States: array (float64, 256 MiB; --array-mib 1024 for 1 GiB), dataframe (~100 MB, mixed columns),
small (1M small tuples), notebook (lambdas, closures, __main__ classes: plain pickle cannot).

    /work/bench-venv/bin/python benchmarks/bench_alternatives.py [--states array,small] [--rounds 3]

(any venv with the project and benchmarks/requirements.txt installed). Writes
ci-artifacts/bench/alternatives.json.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import io
import os
import pickle
import shutil
import sys
import tempfile
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from _common import (
    MIB,
    measure,
    per_round,
    print_table,
    ratio_headline,
    ratios,
    raw_write,
    versions,
    write_json,
)

from resumable_magic import Resumable
from resumable_magic.progress.textview import TextProgress
from resumable_magic.state.serialize import buffer_digest, encode_state
from resumable_magic.storage.local import fsync_dir, write_atomic

# -- what a notebook defines (this script runs as __main__) ------------------------------------------


@dataclasses.dataclass
class Trial:
    seed: int
    score: float
    transform: Callable[[float], float]


def make_scaler(k: float) -> Callable[[float], float]:
    return lambda x: k * x


def build(name: str, args: argparse.Namespace) -> dict[str, Any]:
    rng = np.random.default_rng(0)
    if name == "array":
        return {"weights": rng.random(args.array_mib * MIB // 8), "step": 0, "losses": [0.5] * 1000}
    if name == "dataframe":
        from bench_serialize import dataframe

        return {"df": dataframe(args.df_rows), "seen": 0}
    if name == "small":
        return {"rows": [(i, f"k{i}", i * 0.5) for i in range(1_000_000)], "total": 0}
    if name == "notebook":
        transforms = [make_scaler(i) for i in range(100)] + [lambda x, i=i: x - i for i in range(100)]
        return {"trials": [Trial(i, i / 7, transforms[i % 200]) for i in range(5000)], "best": None}
    raise SystemExit(f"unknown state {name!r}")


# -- writers ------------------------------------------------------------------------------------------


def pickle_dump(folder: Path, state: dict[str, Any]) -> None:
    folder.mkdir()
    tmp = folder / "work.pickle.tmp"
    with open(tmp, "wb") as file:
        pickle.dump(state, file, protocol=5)
        file.flush()
        os.fsync(file.fileno())
    os.replace(tmp, folder / "work.pickle")
    fsync_dir(folder)


def ours(folder: Path, state: dict[str, Any]) -> Resumable:
    run = Resumable("bench", dict(state), dir=folder, progress=TextProgress(quiet=True))
    run.__enter__()  # open + the first checkpoint (iteration 0); closed outside the timing
    return run


def encode_blobs(folder: Path, state: dict[str, Any]) -> None:
    """What store.put_blob per buffer would do: content-addressed blobs, skipping ones already there."""
    objects = folder / "objects"
    objects.mkdir(parents=True, exist_ok=True)
    encoded = encode_state(state)
    names = []
    for data in (encoded.stream, *encoded.buffers):
        name = buffer_digest(data)
        names.append(name)
        if not (objects / name).exists():
            write_atomic(objects / name, data)
    fsync_dir(objects)
    write_atomic(folder / "manifest.json", repr(names).encode())
    fsync_dir(folder)


def dump_session(folder: Path, state: dict[str, Any]) -> None:
    import dill

    main = sys.modules["__main__"]
    vars(main).update(state)
    folder.mkdir()
    try:
        with open(folder / "session.pkl", "wb") as file:
            dill.dump_module(file, module=main)
            file.flush()
            os.fsync(file.fileno())
    finally:
        for name in state:
            vars(main).pop(name, None)


class StoreMagic:
    def __init__(self, root: Path) -> None:
        os.environ["IPYTHONDIR"] = str(root / "ipython")
        from IPython.testing.globalipapp import get_ipython

        self.shell = get_ipython()
        self.shell.extension_manager.load_extension("storemagic")
        if type(self.shell.db).__name__ != "PickleShareDB":
            raise RuntimeError("pickleshare is not installed: %store would store nothing")

    def __call__(self, folder: Path, state: dict[str, Any]) -> None:
        self.shell.user_ns.update(state)
        with contextlib.redirect_stdout(io.StringIO()):  # "Stored 'x' (list)"
            self.shell.run_line_magic("store", " ".join(state))


class Kishu:
    def __init__(self) -> None:
        from kishu.jupyter.namespace import Namespace
        from kishu.planning.plan import SaveVariablesCheckpointAction
        from kishu.storage.checkpoint import KishuCheckpoint

        self.Namespace, self.Action, self.Checkpoint = (
            Namespace,
            SaveVariablesCheckpointAction,
            KishuCheckpoint,
        )

    def __call__(self, folder: Path, state: dict[str, Any]) -> None:
        folder.mkdir()
        database = folder / "kishu.sqlite"
        self.Checkpoint(database).init_database()
        action = self.Action()
        action.variable_names, action.database_path, action.exec_id = list(state), database, "1:1:1"
        action.run(self.Namespace(dict(state)))


class Loopz:
    def __init__(self) -> None:
        import loopz.tracker

        self.tracker = loopz.tracker

    def __call__(self, folder: Path, state: dict[str, Any]) -> None:
        self.tracker.CACHE_DIR = folder
        with contextlib.redirect_stdout(io.StringIO()) as said:
            self.tracker.save_state("bench", state)
        if "Could not save" in said.getvalue():  # loopz warns and leaves the variable out
            raise RuntimeError(said.getvalue().strip().splitlines()[0].lstrip("⚠️ "))


def contenders(state: dict[str, Any], root: Path, optional: dict[str, Any]) -> dict[str, Callable[[], Any]]:
    def fresh() -> Path:
        return root / uuid.uuid4().hex

    try:
        pickled = pickle.dumps(state, protocol=5)
    except Exception:
        pickled = encode_state(state).stream  # notebook objects: the size of our stream
    unchanged = root / "unchanged"
    encode_blobs(unchanged, state)  # the previous checkpoint of the same buffers
    runs: dict[str, Callable[[], Any]] = {
        "raw write": lambda: raw_write(fresh(), pickled),
        "pickle": lambda: pickle_dump(fresh(), state),
        "ours": lambda: ours(fresh(), state),
        "ours-encode-blobs": lambda: encode_blobs(fresh(), state),
        "ours-unchanged": lambda: encode_blobs(unchanged, state),
        "dill.dump_session": lambda: dump_session(fresh(), state),
    }
    for name, writer in optional.items():
        runs[name] = lambda writer=writer: writer(fresh(), state)
    return runs


HEADLINED = ("ours", "dill.dump_session", "%store", "kishu", "loopz")


def headlines_of(state: str, table: dict[str, Any] | None, baseline: str, missing: dict[str, str]) -> list:
    """One checkpoint of ``state``: ours and each alternative against the hand-written pickle (or the raw
    write where pickle cannot), per-round ratios; a left-out contender says why."""
    label = {"pickle": "pickle.dump+fsync", "raw write": "raw write+fsync"}[baseline]
    if table is None:
        return [ratio_headline(f"checkpoint {state}", [], baseline=label, note="pandas not installed")]
    rows = []
    for name in HEADLINED:
        if name in missing:
            why = missing[name]  # "ModuleNotFoundError: ...", or %store's "pickleshare is not installed"
            absent = why.startswith(("ModuleNotFoundError", "ImportError")) or "not installed" in why
            note = "not installed" if absent else f"left out: {why}"
        else:
            note = table[name].get("error") or table[name].get("note", "")
        rows.append(
            ratio_headline(
                f"checkpoint {state}: {name}", per_round(table, name, baseline), baseline=label, note=note
            )
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--states", default="array,dataframe,small,notebook")
    parser.add_argument("--array-mib", type=int, default=256)
    parser.add_argument("--df-rows", type=int, default=2_000_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--dir", default=None, help="where to write (default: a temporary folder)")
    parser.add_argument("--out", default="alternatives.json")
    args = parser.parse_args()
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    root = Path(tempfile.mkdtemp(prefix="bench-alt-", dir=args.dir))
    optional: dict[str, Any] = {}
    missing: dict[str, str] = {}
    for name, make in (("%store", lambda: StoreMagic(root)), ("kishu", Kishu), ("loopz", Loopz)):
        try:
            optional[name] = make()
        except Exception as exc:
            missing[name] = f"{type(exc).__name__}: {exc}"
            print(f"{name}: left out ({missing[name]})")

    def cleanup(name: str, result: Any) -> None:
        if isinstance(result, Resumable):
            with contextlib.redirect_stdout(io.StringIO()):  # its summary line
                result.__exit__(None, None, None)
        for path in root.iterdir():
            if path.name not in ("unchanged", "ipython"):
                shutil.rmtree(path, ignore_errors=True)
        if "%store" in optional:
            optional["%store"].shell.db.clear()

    results: dict[str, Any] = {}
    headlines: list[dict[str, Any]] = []
    try:
        for name in args.states.split(","):
            if name == "dataframe":
                try:
                    import pandas  # noqa: F401
                except ImportError:
                    print("\n[dataframe] skipped: pandas is not installed")
                    headlines += headlines_of(name, None, "pickle", missing)
                    continue
            state = build(name, args)
            table = measure(contenders(state, root, optional), args.rounds, after=cleanup)
            baseline = "pickle" if "wall_s" in table["pickle"] else "raw write"
            ratios(table, baseline, "wall_s")
            ratios(table, baseline, "cpu_s")
            raw = table["raw write"].get("wall_s")
            for row in table.values():
                if raw and "wall_s" in row:
                    row["vs_raw_write"] = row["wall_s"] / raw
                    row["note"] = f"{row['vs_raw_write']:.2f}x raw write"
            size = len(encode_state(state).stream) + sum(b.nbytes for b in encode_state(state).buffers)
            print_table(f"[{name}] one checkpoint, {size / MIB:.1f} MiB", table, baseline)
            results[name] = {"bytes": size, "baseline": baseline, "results": table}
            headlines += headlines_of(name, table, baseline, missing)
            shutil.rmtree(root / "unchanged", ignore_errors=True)
            sys.stdout.flush()
    finally:
        shutil.rmtree(root, ignore_errors=True)
    write_json(
        args.out,
        {
            "args": vars(args),
            "left_out": missing,
            "versions": versions("numpy", "dill", "cloudpickle", "pandas", "IPython", "kishu", "loopz"),
            "states": results,
            "headlines": headlines,
        },
    )


if __name__ == "__main__":
    main()
