"""Checkpoints nobody else can plant: the signing key, signatures, blob BLAKE3 hashes, owners and modes.

A planted checkpoint here is real: its pickle creates a marker file when it is unpickled, and its
checksums are valid, so only the signature (or the ownership check) stands between it and
``pickle.loads``. Every refusal asserts that the marker never appears; ``resumable trust`` then makes
the same checkpoint loadable, and the marker does appear, so the payload is known to work.

The permission tests run the reader as uid 65534 (``setpriv``), since root can read everything; they
need root (CI runs as root) and a python that uid 65534 can execute.
"""

from __future__ import annotations

import contextlib
import json
import os
import pickle
import shutil
import stat
import struct
import subprocess
import sys
import sysconfig
import tempfile
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from blake3 import blake3

from resumable_magic import NoCheckpointError, Resumable, load
from resumable_magic.errors import OptionError, UntrustedCheckpointError
from resumable_magic.frontends import cli
from resumable_magic.progress.model import ProgressModel
from resumable_magic.storage.blobs import strong_hash
from resumable_magic.store.records import canonical as _canonical
from resumable_magic.store.runstore import RunStore, digest
from resumable_magic.trust.keys import SECRET_FILE_NAME, sign, signing_key, verify

ROOT = Path(__file__).resolve().parents[1]
KEY = "victim"
KEY_A = "a1" * 32  # the user's key (hex)
KEY_B = "b2" * 32  # another machine's, or an attacker's
NOBODY = 65534


@pytest.fixture(autouse=True)
def key_a(monkeypatch, tmp_path):
    """Every test signs with KEY_A unless it says otherwise; the real home's key is never touched."""
    monkeypatch.setenv("RESUMABLE_SIGNING_KEY", KEY_A)
    monkeypatch.delenv("RESUMABLE_SIGNING_KEY_FILE", raising=False)
    monkeypatch.setenv("JUPYTER_DATA_DIR", str(tmp_path / "jupyter-data"))


@contextlib.contextmanager
def using_key(monkeypatch, key: str) -> Iterator[None]:
    monkeypatch.setenv("RESUMABLE_SIGNING_KEY", key)
    try:
        yield
    finally:
        monkeypatch.setenv("RESUMABLE_SIGNING_KEY", KEY_A)


# -- planted checkpoints -------------------------------------------------------------------------------


class _Planted:
    """Unpickles to ``{"total": 666}``, creating ``marker`` on the way: code from the checkpoint ran."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (eval, (f"(open({str(self.marker)!r}, 'w').close(), {{'total': 666}})[1]",))


def planted_pickle(marker: Path) -> bytes:
    data = pickle.dumps(_Planted(marker), protocol=5)
    assert b"_Planted" not in data  # only builtins.eval: loadable anywhere
    return data


def manifest_for(data_digest: str, size: int) -> dict:
    return {
        "created": time.time(),
        "position": 3,
        "total": 10,
        "names": ["total"],
        "state": {"digest": data_digest, "size": size},
    }


def commit_state(ckpt: Path, data: bytes) -> Path:
    """Commit ``data`` as the run's next checkpoint with the current key; returns its manifest."""
    store = RunStore(ckpt, KEY)
    store.ensure()
    store.read_latest(load_state=False)  # a writer knows the newest generation before committing
    name, _ = store.put_blob(data)
    generation = store.commit(manifest_for(name, len(data)), keep=store.seen_generation or None)
    return store.path / f"manifest.{generation:08d}.json"


def reseal_unsigned(path: Path, **changes) -> None:
    """Rewrite a manifest with ``changes`` and a valid checksum, but no signature (as a pre-signing
    resumable_magic wrote them, or anybody who can compute xxh3)."""
    record = json.loads(path.read_bytes())
    body = {k: v for k, v in record.items() if k not in ("checksum", "signature")}
    body.update(changes)
    path.write_text(json.dumps({**body, "checksum": digest(_canonical(body))}, indent=1))


def rewrite_keeping_signature(path: Path, **changes) -> None:
    """Change fields of a signed manifest and fix its checksum, keeping the (now wrong) signature."""
    record = json.loads(path.read_bytes())
    body = {k: v for k, v in record.items() if k != "checksum"}
    body.update(changes)
    path.write_text(json.dumps({**body, "checksum": digest(_canonical(body))}, indent=1))


def plant(ckpt: Path, marker: Path, how: str, monkeypatch) -> Path:
    """A checkpoint whose state is the planted pickle, with valid checksums, signed wrongly ``how``."""
    evil = planted_pickle(marker)
    if how == "other key":
        with using_key(monkeypatch, KEY_B):
            manifest = commit_state(ckpt, evil)
    elif how == "unsigned":
        manifest = commit_state(ckpt, evil)
        reseal_unsigned(manifest)
    elif how == "stolen signature":  # the user's signed manifest, pointed at the planted blob
        manifest = commit_state(ckpt, pickle.dumps({"total": 1}))
        name, _ = RunStore(ckpt, KEY).put_blob(evil)
        rewrite_keeping_signature(
            manifest,
            state={"digest": name, "size": len(evil)},
            blob_blake3={name: strong_hash(evil)},
        )
    else:
        raise AssertionError(how)
    return manifest


def run_cli(capsys, *argv: str) -> tuple[int, str, str]:
    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


REASONS = {
    "other key": "signed with a different key: this checkpoint was not written with your key",
    "unsigned": "it is not signed",
    "stolen signature": "signed with a different key",
}


@pytest.mark.parametrize("how", list(REASONS))
def test_a_planted_checkpoint_is_never_unpickled_until_trusted(tmp_path, capsys, monkeypatch, how):
    ckpt, marker = tmp_path / "ck", tmp_path / "marker"
    manifest = plant(ckpt, marker, how, monkeypatch)
    run = manifest.parent
    files = {p: p.read_bytes() for p in [*run.glob("manifest.*.json"), *run.glob("objects/*")]}

    with pytest.raises(NoCheckpointError, match=REASONS[how]):
        load(KEY, dir=ckpt)
    namespace = {"total": 0}
    with pytest.raises(UntrustedCheckpointError, match=REASONS[how]) as refused:
        Resumable(KEY, namespace, ["total"], dir=ckpt, progress=ProgressModel()).open()
    assert namespace == {"total": 0}
    message = str(refused.value)
    assert message.startswith(f"Refusing to load checkpoint file '{manifest}': ")
    assert f"resumable trust {run}" in message and "--fresh" in message
    code, out, err = run_cli(capsys, "show", KEY, "--dir", str(ckpt))
    assert code == 1 and REASONS[how] in err and out == ""
    code, out, _ = run_cli(capsys, "status", "--dir", str(ckpt))
    assert code == 0 and KEY in out
    assert not marker.exists()
    assert {p: p.read_bytes() for p in files} == files  # a refused run deletes nothing

    code, out, err = run_cli(capsys, "trust", str(run))
    assert (code, err) == (0, "")
    assert out.startswith(f"trusted {run}: signed {manifest.name} with $RESUMABLE_SIGNING_KEY")
    assert load(KEY, dir=ckpt) == {"total": 666}
    assert marker.exists()  # the payload was real: only the signature kept it from running


def test_the_message_names_the_key_file_when_the_key_is_the_default(tmp_path, monkeypatch):
    ckpt, marker = tmp_path / "ck", tmp_path / "marker"
    manifest = plant(ckpt, marker, "other key", monkeypatch)
    monkeypatch.delenv("RESUMABLE_SIGNING_KEY")  # plant() put KEY_A back
    secret = tmp_path / "jupyter-data" / SECRET_FILE_NAME
    with pytest.raises(UntrustedCheckpointError) as refused:
        Resumable(KEY, {"total": 0}, ["total"], dir=ckpt, progress=ProgressModel()).open()
    assert str(refused.value) == (
        f"Refusing to load checkpoint file '{manifest}': it is signed with a different key: this "
        f"checkpoint was not written with your key (the key file '{secret}'). Machines that share "
        f"checkpoints (Dask workers, a team's bucket) need the same key: set $RESUMABLE_SIGNING_KEY "
        f"or $RESUMABLE_SIGNING_KEY_FILE on each. Loading a checkpoint runs code from it, so only "
        f"checkpoints written with your key, in files that you own and nobody else can write, are "
        f"loaded (as ssh does with its keys). If you trust it (your own checkpoint from another "
        f"machine, key or older version, or one a colleague gave you), run `resumable trust "
        f"{manifest.parent}` to sign it with your key; otherwise delete it, or start over with --fresh."
    )
    assert secret.exists() and not marker.exists()


def test_a_newer_planted_generation_is_passed_over_for_the_trusted_one(tmp_path, monkeypatch):
    ckpt, marker = tmp_path / "ck", tmp_path / "marker"
    commit_state(ckpt, pickle.dumps({"total": 41}))
    planted = plant(ckpt, marker, "other key", monkeypatch)
    result = RunStore(ckpt, KEY).read_latest()
    assert result.checkpoint is not None and result.checkpoint.generation == 1
    assert [p.path for p in result.problems] == [planted]
    assert isinstance(result.problems[0], UntrustedCheckpointError)
    assert load(KEY, dir=ckpt) == {"total": 41}
    assert not marker.exists()


def test_a_lost_key_refuses_to_resume_and_keeps_the_checkpoints_until_trusted(tmp_path, capsys, monkeypatch):
    ckpt = tmp_path / "ck"

    class Stop(Exception):
        pass

    def loop(state: dict, stop_at: int | None) -> None:
        with Resumable(KEY, state, dir=ckpt, every="1it", progress=ProgressModel()) as run:
            for i in run.iterate(range(10)):
                if i == stop_at:
                    raise Stop
                state["total"] += i

    with contextlib.suppress(Stop):
        loop({"total": 0}, stop_at=6)  # written with KEY_A; "crashes" after iteration 5
    run_dir = RunStore(ckpt, KEY).path
    before = {p: p.read_bytes() for p in [*run_dir.glob("manifest.*"), *run_dir.glob("objects/*")]}
    monkeypatch.setenv("RESUMABLE_SIGNING_KEY", KEY_B)  # a new machine, a lost key
    state = {"total": 0}
    with pytest.raises(UntrustedCheckpointError, match="signed with a different key"):
        loop(state, stop_at=None)
    assert state == {"total": 0}
    assert {p: p.read_bytes() for p in before} == before  # not started over, nothing deleted
    code, out, _ = run_cli(capsys, "trust", str(ckpt))  # a checkpoint folder: every run in it
    assert code == 0 and out.startswith(f"trusted {run_dir}: signed manifest.")
    loop(state, stop_at=None)
    assert state == {"total": sum(range(10))}
    assert RunStore(ckpt, KEY).read_latest().checkpoint.position == 10


# xxh3 (the blobs' names) is a checksum, not a cryptographic hash: two different pickles with one xxh3
# are easy to build. The default secret's first 16 bytes (public, in xxhash's source), and XXH3's
# accumulation `acc[i^1] += lane; acc[i] += lo32(lane ^ key) * hi32(lane ^ key)`: lanes whose low half
# equals the key's contribute only their value, so raising one lane's high half by d and lowering
# another's (same lane, another stripe of the block) by d leaves every accumulator unchanged.
_XXH3_KEY0, _XXH3_KEY1 = struct.unpack("<QQ", bytes.fromhex("b8fe6c3923a44bbe7c01812cf721ad1c"))


def xxh3_colliding_pickles(code: str) -> tuple[bytes, bytes]:
    """(benign, evil): the same xxh3-128 digest and length; ``evil`` runs ``code`` when unpickled.

    Bytes 1024.. and 1088.. are lanes 0 of stripes 0 and 1 of the second 1 KiB block. A length byte
    inside the first decides whether the following opcodes are data (benign) or run (evil); the second
    lane, data in both, compensates.
    """
    call = b"0cbuiltins\nexec\n\x8c" + bytes([len(code)]) + code.encode() + b"\x85R0"
    end = 1096 + len(call) + 2 + 4  # where both parses meet: POP, EMPTY_DICT, STOP
    benign_len, evil_len = end - 1031, 65
    assert benign_len <= 255, "the marker path is too long for a SHORT_BINBYTES"
    variants = []
    for length, compensation in ((benign_len, 0), (evil_len, benign_len - evil_len)):
        data = bytearray(3000)
        data[0:7] = b"\x80\x04B" + struct.pack("<I", 1021)  # PROTO 4; bytes literal up to 1027
        high = int.from_bytes(b"0C" + bytes([length, 0]), "little")  # POP; SHORT_BINBYTES <length>
        struct.pack_into("<Q", data, 1024, (_XXH3_KEY0 & 0xFFFFFFFF) | high << 32)
        struct.pack_into("<Q", data, 1088, (_XXH3_KEY1 & 0xFFFFFFFF) | compensation << 48)
        data[1096 : 1096 + len(call)] = call
        data[1096 + len(call) : 1096 + len(call) + 2] = bytes([ord("C"), end - (1096 + len(call) + 2)])
        data[end : end + 3] = b"0}."
        variants.append(bytes(data))
    return variants[0], variants[1]


def test_a_blob_swapped_for_an_xxh3_collision_is_refused_by_its_blake3_hash(tmp_path):
    ckpt, marker = tmp_path / "ck", tmp_path / "marker"
    benign, evil = xxh3_colliding_pickles(f"open({str(marker)!r}, 'w').close()")
    assert benign != evil and digest(benign) == digest(evil) and len(benign) == len(evil)
    commit_state(ckpt, benign)  # the user's own, signed checkpoint
    assert load(KEY, dir=ckpt) == {}
    store = RunStore(ckpt, KEY)
    blob = store.objects / digest(benign)
    blob.write_bytes(evil)
    assert bytes(store.read_blob(digest(benign)).data) == evil  # the checksum alone accepts it
    with pytest.raises(NoCheckpointError, match="it is not the content its signed manifest names"):
        load(KEY, dir=ckpt)
    assert not marker.exists()
    pickle.loads(evil)
    assert marker.exists()  # what loading it would have done


def test_a_manifest_records_the_blake3_hash_of_its_blob_and_is_signed(tmp_path):
    data = pickle.dumps({"total": 3})
    manifest = json.loads(commit_state(tmp_path / "ck", data).read_bytes())
    assert manifest["blob_blake3"] == {digest(data): blake3(data).hexdigest()}
    assert manifest["signature"].startswith("hmac-sha256:") and len(manifest["signature"]) == 12 + 64


def test_a_nested_key_is_private_under_a_group_umask(tmp_path, capsys):
    """Folders of a nested key are created 0700 whatever the umask (002 is common), so they pass the
    checks; a group-writable one (made by an older version) is refused until trusted."""
    ckpt, key = tmp_path / "ck", "sweep/lr=0.1"
    old = os.umask(0o002)
    try:
        store = RunStore(ckpt, key)
        store.ensure()
        name, _ = store.put_blob(pickle.dumps({"total": 5}))
        store.commit(manifest_for(name, 10))
    finally:
        os.umask(old)
    sweep = ckpt / "sweep"
    assert stat.S_IMODE(sweep.stat().st_mode) == 0o700
    assert load(key, dir=ckpt) == {"total": 5}
    sweep.chmod(0o775)
    with pytest.raises(
        NoCheckpointError, match=f"'{sweep}': it is writable by its group .* chmod go-w {sweep}"
    ):
        load(key, dir=ckpt)
    code, out, _ = run_cli(capsys, "trust", str(ckpt))
    assert code == 0 and "made 1 file(s) private" in out
    assert stat.S_IMODE(sweep.stat().st_mode) == 0o755
    assert load(key, dir=ckpt) == {"total": 5}


# -- resumable trust ---------------------------------------------------------------------------------


def test_trust_skips_damaged_files_and_makes_the_run_private(tmp_path, capsys, monkeypatch):
    ckpt = tmp_path / "ck"
    with using_key(monkeypatch, KEY_B):
        first = commit_state(ckpt, pickle.dumps({"total": 1}))
        second = commit_state(ckpt, pickle.dumps({"total": 2}))
    second.write_text(second.read_text().replace('"position": 3', '"position": 4'))  # checksum now wrong
    run = second.parent
    for path in [run, run / "objects"]:
        path.chmod(0o755)
    for path in [first, *run.glob("objects/*")]:
        path.chmod(0o644)
    code, out, _ = run_cli(capsys, "trust", str(run))
    assert code == 0
    lines = out.splitlines()
    assert (
        lines[0] == f"trusted {run}: signed {first.name} with $RESUMABLE_SIGNING_KEY; made 5 file(s) private"
    )
    assert lines[1].startswith(f"  not signed (damaged): {second.name}: ") and "checksum" in lines[1]
    assert load(KEY, dir=ckpt) == {"total": 1}
    assert stat.S_IMODE(run.stat().st_mode) == 0o700
    assert all(stat.S_IMODE(p.stat().st_mode) == 0o600 for p in [first, *run.glob("objects/*")])


def test_trust_refuses_files_owned_by_someone_else(tmp_path, capsys, monkeypatch):
    ckpt, marker = tmp_path / "ck", tmp_path / "marker"
    manifest = plant(ckpt, marker, "other key", monkeypatch)
    run = manifest.parent
    os.chown(manifest, NOBODY, NOBODY)
    before = manifest.read_bytes()
    code, out, err = run_cli(capsys, "trust", str(run))
    assert code == 1 and out == ""
    assert f"'{manifest}' is owned by nobody (uid {NOBODY}) and you are root (uid 0)" in err
    assert f"cp -r {run} COPY" in err
    assert manifest.read_bytes() == before
    copy = tmp_path / "mine" / KEY
    shutil.copytree(run, copy)  # as the message says: the copy is yours
    assert run_cli(capsys, "trust", str(copy))[0] == 0
    assert load(KEY, dir=copy.parent) == {"total": 666} and marker.exists()


def test_root_refuses_a_checkpoint_owned_by_another_user(tmp_path, monkeypatch):
    """As ssh does: root too loads only its own files (an attacker's file in root's folder)."""
    ckpt, marker = tmp_path / "ck", tmp_path / "marker"
    manifest = commit_state(ckpt, planted_pickle(marker))  # validly signed
    blob = next(manifest.parent.glob("objects/*"))
    os.chown(blob, NOBODY, NOBODY)
    with pytest.raises(NoCheckpointError, match=rf"owned by nobody \(uid {NOBODY}\) and you are root"):
        load(KEY, dir=ckpt)
    assert not marker.exists()


# -- the key -------------------------------------------------------------------------------------------


def test_the_key_is_created_private_on_first_use(tmp_path, monkeypatch):
    monkeypatch.delenv("RESUMABLE_SIGNING_KEY")
    secret = tmp_path / "jupyter-data" / SECRET_FILE_NAME
    assert not secret.exists()
    key = signing_key()
    assert stat.S_IMODE(secret.stat().st_mode) == 0o600
    assert stat.S_IMODE(secret.parent.stat().st_mode) == 0o700
    assert len(key) == 32 and secret.read_text() == key.hex() + "\n"
    assert signing_key() == key
    monkeypatch.setenv("JUPYTER_DATA_DIR", str(tmp_path / "elsewhere"))
    assert signing_key() != key  # the cache follows the environment
    secret.chmod(0o644)
    monkeypatch.setenv("JUPYTER_DATA_DIR", str(secret.parent))
    monkeypatch.setenv("HOME", str(tmp_path))  # a new cache entry (the cache follows these variables)
    with pytest.raises(OptionError, match="too open"):
        signing_key()


def test_two_processes_creating_the_key_at_once_end_with_one_key(tmp_path):
    """Both processes race to create the key in each of 40 fresh folders: each folder ends with one
    key, and both processes use it (a key replaced after one process read it would differ)."""
    folders = [tmp_path / f"data-{i}" for i in range(40)]
    go = tmp_path / "go"
    script = textwrap.dedent(
        """
        import json, os, sys
        from resumable_magic.trust import keys as trust
        go, ready, folders = sys.argv[1], sys.argv[2], sys.argv[3:]
        open(ready, "w").close()
        while not os.path.exists(go):
            pass
        keys = []
        for folder in folders:
            os.environ["JUPYTER_DATA_DIR"] = folder
            keys.append(trust.signing_key().hex())
        print(json.dumps(keys))
        """
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("RESUMABLE_SIGNING_KEY")}
    ready = [tmp_path / f"ready-{i}" for i in range(2)]
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", script, str(go), str(r), *map(str, folders)],
            stdout=subprocess.PIPE,
            env=env,
        )
        for r in ready
    ]
    deadline = time.monotonic() + 60
    while not all(r.exists() for r in ready) and time.monotonic() < deadline:
        time.sleep(0.01)
    go.touch()
    results = [json.loads(p.communicate(timeout=120)[0]) for p in procs]
    assert all(p.returncode == 0 for p in procs)
    on_disk = [(f / SECRET_FILE_NAME).read_text().strip() for f in folders]
    assert results[0] == results[1] == on_disk
    assert len(set(on_disk)) == len(folders)
    assert [sorted(os.listdir(f)) for f in folders] == [[SECRET_FILE_NAME]] * len(folders)  # no temporaries


def test_key_from_the_environment_and_from_a_key_file(tmp_path, monkeypatch):
    assert signing_key() == bytes.fromhex(KEY_A)
    monkeypatch.setenv("RESUMABLE_SIGNING_KEY", "correct horse battery staple")
    assert signing_key() == b"correct horse battery staple"
    monkeypatch.setenv("RESUMABLE_SIGNING_KEY", "too short")
    with pytest.raises(OptionError, match="at least 16 bytes"):
        signing_key()

    monkeypatch.delenv("RESUMABLE_SIGNING_KEY")
    key_file = tmp_path / "team.key"
    key_file.write_text(KEY_B + "\n")
    monkeypatch.setenv("RESUMABLE_SIGNING_KEY_FILE", str(key_file))
    key_file.chmod(0o640)  # a team's group may read it
    assert signing_key() == bytes.fromhex(KEY_B)
    monkeypatch.setenv("RESUMABLE_SIGNING_KEY", KEY_A)  # the key itself wins over a key file
    assert signing_key() == bytes.fromhex(KEY_A)
    monkeypatch.delenv("RESUMABLE_SIGNING_KEY")

    open_file = tmp_path / "open.key"
    open_file.write_text(KEY_B)
    open_file.chmod(0o604)
    monkeypatch.setenv("RESUMABLE_SIGNING_KEY_FILE", str(open_file))
    with pytest.raises(OptionError, match="permissions 0604 are too open"):
        signing_key()
    monkeypatch.setenv("RESUMABLE_SIGNING_KEY_FILE", str(tmp_path / "missing.key"))
    with pytest.raises(OptionError, match="cannot be read"):
        signing_key()
    assert not (tmp_path / "jupyter-data").exists()  # a configured key never creates the default one


def test_sign_and_verify(monkeypatch):
    signature = sign(b"record")
    assert signature.startswith("hmac-sha256:") and len(signature) == 12 + 64
    assert verify(b"record", signature)
    assert not verify(b"record!", signature)
    assert not verify(b"record", signature.replace("hmac-sha256:", "hmac-sha256:0")[:-1])
    assert not verify(b"record", None) and not verify(b"record", 42)
    monkeypatch.setenv("RESUMABLE_SIGNING_KEY", KEY_B)
    assert not verify(b"record", signature)


# -- owners and modes, with the reader as another user --------------------------------------------------

READER = """
import json, sys
from resumable_magic import load
try:
    print(json.dumps({"values": load(sys.argv[1], dir=sys.argv[2])}))
except Exception as exc:
    print(json.dumps({"error": type(exc).__name__, "message": str(exc)}))
"""


@pytest.fixture
def world(monkeypatch):
    """A folder uid 65534 can enter, with its HOME, its copy of the signing key and a place for the
    marker; the test process (root) writes checkpoints with the same key."""
    assert os.geteuid() == 0, "these tests run the reader as uid 65534 through setpriv: run them as root"
    assert shutil.which("setpriv"), "setpriv (util-linux) is needed to run the reader as uid 65534"
    base = Path(tempfile.mkdtemp(prefix="resumable-trust-"))
    try:
        base.chmod(0o755)
        home, out = base / "home", base / "out"
        for folder in (home, out):
            folder.mkdir(mode=0o755)
            os.chown(folder, NOBODY, NOBODY)
        key = base / "signing.key"
        key.write_text(KEY_B + "\n")
        key.chmod(0o600)
        os.chown(key, NOBODY, NOBODY)
        monkeypatch.delenv("RESUMABLE_SIGNING_KEY")
        monkeypatch.setenv("RESUMABLE_SIGNING_KEY_FILE", str(key))
        site = sysconfig.get_paths()["purelib"]
        env = {
            "PATH": "/usr/bin:/bin",
            "HOME": str(home),
            "RESUMABLE_SIGNING_KEY_FILE": str(key),
            "PYTHONPATH": os.pathsep.join([str(ROOT), site]),
        }
        yield {"base": base, "marker": out / "marker", "env": env, "python": reader_python(env)}
    finally:
        shutil.rmtree(base, ignore_errors=True)


def as_nobody(python: str, env: dict, *args: str) -> subprocess.CompletedProcess:
    command = ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups", python, "-s", "-B"]
    return subprocess.run([*command, *args], env=env, capture_output=True, text=True, timeout=120, cwd="/")


def reader_python(env: dict) -> str:
    """This interpreter if uid 65534 can run it, else the system's python of the same version (the
    venv's python may live in a home folder other users cannot enter)."""
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    candidates = [sys.executable, os.path.realpath(sys.executable), f"/usr/bin/python{version}"]
    tried = []
    for python in dict.fromkeys(candidates):
        probe = as_nobody(python, env, "-c", "import dill, xxhash, resumable_magic.store.runstore")
        if probe.returncode == 0:
            return python
        tried.append(f"{python}: {probe.stderr.strip().splitlines()[-1:] or probe.returncode}")
    pytest.fail(f"no python {version} that uid {NOBODY} can run with this venv's packages: {tried}")


def read_as_nobody(world: dict, ckpt: Path) -> dict:
    done = as_nobody(world["python"], world["env"], "-c", READER, KEY, str(ckpt))
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def chown_tree(path: Path, uid: int) -> None:
    for folder, _, names in os.walk(path):
        os.chown(folder, uid, uid)
        for name in names:
            os.chown(Path(folder) / name, uid, uid)


def test_nobody_loads_its_own_private_checkpoint(world):
    ckpt = world["base"] / "ck"
    commit_state(ckpt, planted_pickle(world["marker"]))
    chown_tree(ckpt, NOBODY)
    assert read_as_nobody(world, ckpt) == {"values": {"total": 666}}
    assert world["marker"].exists()  # the reader did unpickle it: the refusals below are the checks


def test_nobody_refuses_a_checkpoint_owned_by_root(world):
    ckpt = world["base"] / "ck"
    manifest = commit_state(ckpt, planted_pickle(world["marker"]))  # signed with the reader's key
    for folder, _, names in os.walk(ckpt):  # readable by everyone, writable by root only
        Path(folder).chmod(0o755)
        for name in names:
            (Path(folder) / name).chmod(0o644)
    result = read_as_nobody(world, ckpt)
    assert result["error"] == "NoCheckpointError"
    assert (
        f"Refusing to load checkpoint folder '{ckpt}': it is owned by root (uid 0) and you are "
        f"nobody (uid {NOBODY}). Loading a checkpoint runs code from it" in result["message"]
    )
    assert f"cp -r {manifest.parent} COPY" in result["message"]
    assert not world["marker"].exists()


@pytest.mark.parametrize(
    ("target", "bits", "who"),
    [
        ("blob", 0o020, "its group"),
        ("manifest", 0o002, "others"),
        ("run folder", 0o020, "its group"),
        ("objects", 0o022, "its group and others"),
        ("checkpoint folder", 0o020, "its group"),
    ],
)
def test_nobody_refuses_its_own_checkpoint_when_others_can_write_it(world, target, bits, who):
    ckpt = world["base"] / "ck"
    manifest = commit_state(ckpt, planted_pickle(world["marker"]))
    chown_tree(ckpt, NOBODY)
    run = manifest.parent
    path = {
        "blob": next(run.glob("objects/*")),
        "manifest": manifest,
        "run folder": run,
        "objects": run / "objects",
        "checkpoint folder": ckpt,
    }[target]
    mode = stat.S_IMODE(path.stat().st_mode) | bits
    path.chmod(mode)
    result = read_as_nobody(world, ckpt)
    assert result["error"] == "NoCheckpointError"
    assert f"'{path}': it is writable by {who} (mode {mode:04o})" in result["message"]
    fix = f"chmod go-w {ckpt}" if target == "checkpoint folder" else f"resumable trust {run}"
    assert fix in result["message"]
    assert not world["marker"].exists()
