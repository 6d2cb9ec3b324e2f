"""One folder per key (issue 14, class 2): keys that earlier versions sanitised into one folder
(``exp/α`` and ``exp/β``, two long names with a common 120-character prefix, ``Run`` and ``run`` on a
case-insensitive disk) get folders of their own, and a folder whose records name another key is
refused rather than read as this key's. Through the mapping itself, the plain API, the magic in
process, ``load`` and the CLI. (Runs in the folders earlier versions gave their keys:
``test_old_folders.py``.)
"""

from __future__ import annotations

import itertools
import shutil
import unicodedata
from pathlib import Path
from typing import Any

import pytest
from IPython.core.getipython import get_ipython as current_shell
from IPython.testing import globalipapp

from resumable_magic import Resumable, load
from resumable_magic.errors import KeyMismatchError, OptionError, ResumeRefusedError
from resumable_magic.frontends import cli
from resumable_magic.store.catalog import find_run, list_runs
from resumable_magic.store.keys import canonical_key, key_to_relpath, legacy_relpath
from resumable_magic.store.runstore import RunStore

NFC, NFD = unicodedata.normalize("NFC", "exp/café"), unicodedata.normalize("NFD", "exp/café")
LONG = "x" * 120
# Pairs of keys that earlier versions gave one folder.
COLLIDING = [
    pytest.param("exp/α", "exp/β", id="non-ascii"),
    pytest.param(LONG + "a" * 10, LONG + "b" * 10, id="long-common-prefix"),
    pytest.param("Run", "run", id="case"),
    pytest.param("sweep/name=a b", "sweep/name=a_b", id="unsafe-vs-underscore"),
]


class Stop(Exception):
    """Stops a loop midway: the run keeps its checkpoints (a crash, as far as the store is concerned)."""


def count(
    key: str, directory: Path, n: int = 8, stop_at: int | None = None
) -> tuple[dict[str, Any], list[int]]:
    """A run of ``key``: the iterations it ran this time, and its state (whose items name the key, so
    that a run replaying another's values shows it)."""
    state: dict[str, Any] = {"total": 0, "items": []}
    ran: list[int] = []
    try:
        with Resumable(key, state, dir=directory, every="1it") as run:
            for i in run.iterate(range(n)):
                ran.append(i)
                if i == stop_at:
                    raise Stop
                state["total"] += i
                state["items"].append(f"{key}:{i}")
    except Stop:
        pass
    return state, ran


def expected(key: str, n: int = 8) -> dict[str, Any]:
    return {"total": sum(range(n)), "items": [f"{key}:{i}" for i in range(n)]}


# -- the mapping ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "key", ["sweep/lr=0.01,seed=3", "squares/shard-0003-of-0008", "compat/finished", "nb.ipynb/cell-1f2e"]
)
def test_plain_keys_keep_their_folders(key: str) -> None:
    assert key_to_relpath(key) == legacy_relpath(key) == Path(key)


def test_folder_names_are_readable_with_a_digest_where_needed() -> None:
    assert str(key_to_relpath("exp/α")).startswith("exp/_~")
    assert str(key_to_relpath("Analysis.ipynb/cell-1")).startswith("Analysis.ipynb~")
    assert str(key_to_relpath(NFC)).startswith("exp/cafe~")  # accents dropped from the slug
    long = str(key_to_relpath(LONG + "a" * 10))
    assert long.startswith(LONG + "~") and len(long) == 120 + 1 + 12
    with pytest.raises(OptionError, match="UTF-8"):
        key_to_relpath("a\ud800")


def test_no_two_keys_share_a_folder_even_case_folded_or_normalised() -> None:
    """Every key over a small alphabet of troublemakers, up to four characters: distinct keys get
    folder paths that stay distinct case-folded (macOS, Windows) and NFC- or NFD-normalised (macOS)."""
    alphabet = ["a", "A", "_", " ", "~", ".", "é", "e\u0301", "α", "/", "-", "0"]
    keys: dict[str, str] = {}
    for length in range(1, 5):
        for chars in itertools.product(alphabet, repeat=length):
            try:
                keys[canonical_key("".join(chars))] = "".join(chars)
            except OptionError:
                continue
    folders: dict[str, str] = {}
    for key in keys:
        assert canonical_key(key) == key  # the canonical form is one: a key is not two keys
        relpath = str(key_to_relpath(key))
        assert relpath.isascii(), relpath
        for folded in {relpath.casefold(), unicodedata.normalize("NFD", relpath).casefold()}:
            assert folders.setdefault(folded, key) == key, (
                f"{key!r} and {folders[folded]!r} share {relpath!r}"
            )
    assert len(keys) > 10_000


def test_one_key_in_any_unicode_normalisation() -> None:
    """é as one code point or as e + combining accent looks the same: it is one key (recorded
    composed), and ``a//b`` is ``a/b``, as before."""
    assert canonical_key(NFD) == NFC != NFD
    assert key_to_relpath(NFD) == key_to_relpath(NFC)
    assert canonical_key(" a//b/ ") == "a/b"


# -- collisions, through the plain API and load -----------------------------------------------------


@pytest.mark.parametrize(("first", "second"), COLLIDING)
def test_keys_that_shared_a_folder_no_longer_replay_each_other(
    tmp_path: Path, first: str, second: str
) -> None:
    # One folder before (for Run and run: on a disk that folds case)
    assert str(legacy_relpath(first)).casefold() == str(legacy_relpath(second)).casefold()
    assert count(first, tmp_path) == (expected(first), list(range(8)))
    state, ran = count(second, tmp_path, stop_at=5)  # not a replay of the first: it runs
    assert ran == list(range(6)) and state["items"] == [f"{second}:{i}" for i in range(5)]
    assert count(second, tmp_path) == (expected(second), [5, 6, 7])  # resumes its own checkpoint
    assert load(first, dir=tmp_path) == expected(first)
    assert load(second, dir=tmp_path) == expected(second)
    assert RunStore(tmp_path, first).path != RunStore(tmp_path, second).path
    assert sorted(r.key for r in list_runs(tmp_path)) == sorted([first, second])


def test_a_nested_key_named_like_a_run_file_is_not_in_that_runs_files(tmp_path: Path) -> None:
    """'a/objects' was run 'a''s blob folder, whose collection deleted the nested run's manifests."""
    assert str(key_to_relpath("a/objects")).startswith("a/objects~")
    count("a/objects", tmp_path, stop_at=4)
    count("a", tmp_path)  # its commits collect what its blob folder holds that it does not name
    assert count("a/objects", tmp_path) == (expected("a/objects"), [4, 5, 6, 7])
    assert sorted(r.key for r in list_runs(tmp_path)) == ["a", "a/objects"]


def test_composed_and_decomposed_key_are_one_run(tmp_path: Path) -> None:
    count(NFC, tmp_path, stop_at=3)
    state, ran = count(NFD, tmp_path)
    assert ran == [3, 4, 5, 6, 7]  # resumed, not started over
    assert [unicodedata.normalize("NFC", item) for item in state["items"]] == expected(NFC)["items"]
    assert load(NFD, dir=tmp_path) == state
    assert [r.key for r in list_runs(tmp_path)] == [NFC]


# -- the same through the magic, in process --------------------------------------------------------


def shell() -> Any:
    ip = current_shell() or globalipapp.get_ipython()
    if "resumable" not in ip.magics_manager.magics["cell"]:
        ip.run_line_magic("load_ext", "resumable_magic")
    return ip


@pytest.mark.parametrize(("first", "second"), COLLIDING[:3])
def test_the_magic_keeps_them_apart_too(tmp_path: Path, first: str, second: str) -> None:
    ip = shell()
    for key in (first, second, first):
        ip.user_ns.pop("items", None)
        result = ip.run_cell(
            f"%%resumable items --name {key} --dir {tmp_path} --every 1it\n"
            f"items = []\nfor i in range(5):\n    items.append('{key}:' + str(i))\n"
        )
        assert result.success, result.error_before_exec or result.error_in_exec
        assert ip.user_ns["items"] == [f"{key}:{i}" for i in range(5)]
    assert {r.key: r.state for r in list_runs(tmp_path)} == {first: "finished", second: "finished"}


# -- a folder holding another key's run is refused ------------------------------------------------


@pytest.fixture
def impostor(tmp_path: Path) -> tuple[Path, Path]:
    """Run 'b''s folder holds a copy of run 'a' (copied by hand, or a digest collision)."""
    count("a", tmp_path)
    folder = RunStore(tmp_path, "b").path
    shutil.copytree(RunStore(tmp_path, "a").path, folder)
    return tmp_path, folder


def test_a_folder_of_another_key_is_refused_on_open(impostor: tuple[Path, Path]) -> None:
    directory, folder = impostor
    with pytest.raises(KeyMismatchError) as refused:
        count("b", directory)
    error = refused.value
    assert isinstance(error, ResumeRefusedError) and (error.key, error.recorded, error.folder) == (
        "b",
        "a",
        folder,
    )
    assert f"Folder {str(folder)!r} holds run 'a', not run 'b'" in str(error)
    with pytest.raises(KeyMismatchError):
        load("b", dir=directory)
    with pytest.raises(KeyMismatchError):
        RunStore(directory, "b").read_latest(load_state=False)
    # The catalog finds the folder by listing and takes the key from its records: listed as 'a'.
    assert sorted((r.key, r.path.name) for r in list_runs(directory)) == [("a", "a"), ("a", "b")]
    assert find_run(directory, "b").key == "a"  # type: ignore[union-attr]


def run_cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    capsys.readouterr()
    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_show_refuses_it_and_shows_real_keys(
    impostor: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    directory, _ = impostor
    code, _, err = run_cli(capsys, "show", "b", "--dir", str(directory))
    assert code == 1 and "KeyMismatchError" in err and "holds run 'a', not run 'b'" in err
    code, out, err = run_cli(capsys, "show", "a", "--dir", str(directory))
    assert code == 0, err
    assert "key:         a\n" in out


def test_status_and_show_name_the_real_keys(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for key in ("exp/α", "exp/β"):
        count(key, tmp_path)
    code, out, err = run_cli(capsys, "status", "--dir", str(tmp_path))
    assert code == 0, err
    assert sorted(line.split()[0] for line in out.splitlines()[1:]) == ["exp/α", "exp/β"]
    for key in ("exp/α", "exp/β"):
        code, out, err = run_cli(capsys, "show", key, "--dir", str(tmp_path))
        assert code == 0, err
        assert f"key:         {key}\n" in out
        assert f"folder:      {RunStore(tmp_path, key).path}\n" in out
