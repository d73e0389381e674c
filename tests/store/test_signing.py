"""Signed releases: freeze --sign, verify --trust, and every way one with write access can swap a release.

The attacks are the ones a security review ran on an unsigned store (issue 11, item 7): repoint a frozen tag;
forge a record, table and chunk with correct digests and repoint (rewriting the reflog to match); flip
``frozen`` to false and delete; delete reflog entries; sign with one's own key; damage or move a signature.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

pytest.importorskip("cryptography")
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

import ckpt
from ckpt.cli import cli
from ckpt.errors import RecordError, SignatureError
from ckpt.model import canonical_json, digest_bytes
from ckpt.store import _layout as layout
from ckpt.store._signing import ReleaseSigner, load_trusted_keys

RELEASE = "tiny-2026-11-28"


def _write_key(folder: Path, name: str, key: object, *, openssh: bool = False, password: bytes | None = None) -> Path:
    enc = serialization.BestAvailableEncryption(password) if password else serialization.NoEncryption()
    fmt = serialization.PrivateFormat.OpenSSH if openssh else serialization.PrivateFormat.PKCS8
    path = folder / name
    path.write_bytes(key.private_bytes(serialization.Encoding.PEM, fmt, enc))  # type: ignore[attr-defined]
    pub = key.public_key()  # type: ignore[attr-defined]
    (folder / f"{name}.pub").write_bytes(
        pub.public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
        if openssh
        else pub.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    return path


@pytest.fixture
def keys(tmp_path: Path) -> dict[str, Path]:
    folder = tmp_path / "keys"
    folder.mkdir()
    return {
        "ed": _write_key(folder, "ed", ed25519.Ed25519PrivateKey.generate(), openssh=True),
        "ec": _write_key(folder, "ec.pem", ec.generate_private_key(ec.SECP256R1())),
        "p384": _write_key(folder, "p384.pem", ec.generate_private_key(ec.SECP384R1())),
        "mallory": _write_key(folder, "mallory", ed25519.Ed25519PrivateKey.generate(), openssh=True),
    }


def _pub(key: Path) -> Path:
    return key.with_name(key.name + ".pub")


@pytest.fixture
def store(tmp_path: Path) -> ckpt.Store:
    s = ckpt.init(str(tmp_path / "store"), chunk_size=64)
    s.save({"w": np.arange(8, dtype=np.float32)}, model="tiny", step=1)
    s.save({"w": np.arange(8, dtype=np.float32) * 2}, step=2)
    return s


def _root(store: ckpt.Store) -> Path:
    return Path(store.url)


def _kinds(report: ckpt.VerifyReport) -> list[tuple[str, str]]:
    return [(d.kind, d.digest) for d in report.damage if d.object == "release"]


def _rewrite_tag(store: ckpt.Store, name: str, **fields: object) -> None:
    path = _root(store) / layout.tag_path(name)
    record = json.loads(path.read_bytes())
    path.write_bytes(canonical_json({**record, **fields}))


# -- the happy path ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("which", ["ed", "ec", "p384"])
def test_a_signed_release_verifies_with_its_public_key(store: ckpt.Store, keys: dict[str, Path], which: str) -> None:
    name = store.freeze("main~1", name=RELEASE, signer=ReleaseSigner.from_file(keys[which], name="alice@lab"))
    report = store.verify(trust=[_pub(keys[which])])
    assert report.ok, report.damage
    (release,) = report.releases
    assert release.name == name and release.status == "signed"
    assert release.snapshot == store.resolve("main~1").id
    (sig,) = release.signatures
    assert sig.valid and sig.trusted and sig.signer == "alice@lab" and sig.snapshot == release.snapshot
    assert sig.key_id == ReleaseSigner.from_file(keys[which]).key_id == load_trusted_keys([_pub(keys[which])])[0].key_id
    # the signature lives beside the tag, and a reader without keys checks it against its own key
    assert list((_root(store) / layout.SIGNATURES / RELEASE).glob("*.json"))
    assert store.verify().ok


def test_the_key_id_is_the_openssh_fingerprint(keys: dict[str, Path]) -> None:
    ssh_keygen = shutil.which("ssh-keygen")
    if ssh_keygen is None:
        pytest.skip("no ssh-keygen")
    import subprocess

    out = subprocess.run([ssh_keygen, "-l", "-f", str(_pub(keys["ed"]))], capture_output=True, text=True, check=True)
    assert out.stdout.split()[1] == ReleaseSigner.from_file(keys["ed"]).key_id


def test_unsigned_releases_fail_only_when_signatures_are_asked_for(store: ckpt.Store, keys: dict[str, Path]) -> None:
    store.freeze("main", name=RELEASE)
    assert store.verify().ok
    report = store.verify(trust=[_pub(keys["ed"])])
    assert _kinds(report) == [("unsigned", RELEASE)]
    store.sign_release(RELEASE, keys["ed"])  # signed afterwards, as it is now
    assert store.verify(trust=[_pub(keys["ed"])]).ok


def test_a_trust_file_holds_many_keys(store: ckpt.Store, keys: dict[str, Path], tmp_path: Path) -> None:
    store.freeze("main", name=RELEASE, signer=keys["ec"])
    trust = tmp_path / "trusted.txt"
    trust.write_text(
        "# release keys of the team\n\n"
        + _pub(keys["ed"]).read_text()
        + "\n"
        + _pub(keys["ec"]).read_text()  # a PEM block
        + "\n"
    )
    found = load_trusted_keys([trust])
    assert [k.source.rsplit(":", 1)[1] for k in found] == ["3", "7"]  # the OpenSSH line, then where the PEM block ends
    assert store.verify(trust=[trust]).ok


# -- attacks by someone who can write the store --------------------------------------------------------------


def test_repointing_a_frozen_tag(store: ckpt.Store, keys: dict[str, Path]) -> None:
    store.freeze("main~1", name=RELEASE, signer=keys["ed"])
    _rewrite_tag(store, RELEASE, id=store.resolve("main").id)
    assert _kinds(store.verify()) == [("repointed", RELEASE)]  # the reflog says where it was frozen
    assert _kinds(store.verify(trust=[_pub(keys["ed"])])) == [("repointed", RELEASE)]


def test_a_forged_snapshot_with_a_rewritten_reflog(store: ckpt.Store, keys: dict[str, Path]) -> None:
    """Forge record + table + chunk with correct digests, repoint the tag and rewrite the reflog to match:
    nothing in the store contradicts it any more, but the signature names the snapshot that was published."""
    store.freeze("main", name=RELEASE, signer=keys["ed"])
    evil = np.full(8, 666, dtype=np.float32)
    forged = ckpt.init(str(_root(store).parent / "forge"), chunk_size=64).save({"w": evil}, model="tiny", step=2)
    for sub in ("chunks", "tables", "snapshots"):
        shutil.copytree(_root(store).parent / "forge" / sub, _root(store) / sub, dirs_exist_ok=True)
    _rewrite_tag(store, RELEASE, id=forged.id)
    for log in (_root(store) / layout.reflog_prefix(f"refs/tags/{RELEASE}")).iterdir():
        entry = json.loads(log.read_bytes())
        log.write_bytes(canonical_json({**entry, "new": forged.id}))
    assert store.verify(RELEASE).ok  # the forged snapshot is internally consistent
    assert _kinds(store.verify()) == [("repointed", RELEASE)]  # the old signature names the real one
    # and if the forger also deletes the signature, only the trusted key can tell
    shutil.rmtree(_root(store) / layout.SIGNATURES)
    assert store.verify().ok
    assert _kinds(store.verify(trust=[_pub(keys["ed"])])) == [("unsigned", RELEASE)]


def test_the_forger_signs_with_his_own_key(store: ckpt.Store, keys: dict[str, Path]) -> None:
    store.freeze("main~1", name=RELEASE, signer=keys["ed"])
    _rewrite_tag(store, RELEASE, id=store.resolve("main").id)
    for log in (_root(store) / layout.reflog_prefix(f"refs/tags/{RELEASE}")).iterdir():
        log.write_bytes(canonical_json({**json.loads(log.read_bytes()), "new": store.resolve("main").id}))
    shutil.rmtree(_root(store) / layout.SIGNATURES)
    store.sign_release(RELEASE, keys["mallory"])
    assert store.verify().ok  # a consistent store, signed by someone
    report = store.verify(trust=[_pub(keys["ed"])])
    assert _kinds(report) == [("unsigned", RELEASE)]
    assert "do not trust" in report.damage[0].message


def test_unfreezing_and_deleting_a_release(store: ckpt.Store, keys: dict[str, Path]) -> None:
    store.freeze("main", name=RELEASE, signer=keys["ed"])
    _rewrite_tag(store, RELEASE, frozen=False)
    assert _kinds(store.verify()) == [("tampered", RELEASE)]
    store.delete_tag(RELEASE)  # possible now that it is not frozen
    report = store.verify()
    assert _kinds(report) == [("tampered", RELEASE)]
    assert "gone" in report.damage[0].message


def test_deleting_the_reflog_of_a_release(store: ckpt.Store) -> None:
    store.freeze("main", name=RELEASE)
    shutil.rmtree(_root(store) / layout.reflog_prefix(f"refs/tags/{RELEASE}"))
    report = store.verify()
    assert _kinds(report) == [("tampered", RELEASE)]
    assert "reflog" in report.damage[0].message


@pytest.mark.parametrize("damage", ["signature", "statement", "key", "other-release", "json"])
def test_a_damaged_or_moved_signature_is_forged(store: ckpt.Store, keys: dict[str, Path], damage: str) -> None:
    store.freeze("main~1", name="other", signer=keys["ed"])
    store.freeze("main", name=RELEASE, signer=keys["ed"])
    (path,) = (_root(store) / layout.SIGNATURES / RELEASE).glob("*.json")
    record = json.loads(path.read_bytes())
    if damage == "signature":
        sig = bytearray(__import__("base64").b64decode(record["signature"]))
        sig[5] ^= 1
        record["signature"] = __import__("base64").b64encode(bytes(sig)).decode()
    elif damage == "statement":
        record["statement"] = record["statement"].replace(store.resolve("main").id, store.resolve("main~1").id)
    elif damage == "key":
        record["public_key"] = _pub(keys["mallory"]).read_text().strip()
    elif damage == "other-release":
        (other,) = (_root(store) / layout.SIGNATURES / "other").glob("*.json")
        record = json.loads(other.read_bytes())  # a valid signature, of another release
    path.write_bytes(b"{not json" if damage == "json" else canonical_json(record))
    kinds = _kinds(store.verify(trust=[_pub(keys["ed"])]))
    assert kinds == [("forged", RELEASE)], kinds


def test_verify_on_the_command_line(store: ckpt.Store, keys: dict[str, Path]) -> None:
    runner = CliRunner()
    url = str(_root(store))
    result = runner.invoke(cli, ["--store", url, "freeze", "main", "--name", RELEASE, "--sign", str(keys["ed"])])
    assert result.exit_code == 0, result.output
    assert ReleaseSigner.from_file(keys["ed"]).key_id in result.output
    result = runner.invoke(cli, ["--store", url, "verify", "--trust", str(_pub(keys["ed"])), "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert data["ok"] and data["releases"][0]["status"] == "signed"
    result = runner.invoke(cli, ["--store", url, "verify", "--trust", str(_pub(keys["mallory"]))])
    assert result.exit_code == 1 and "unsigned release" in result.output


def test_an_encrypted_key_asks_for_its_passphrase(store: ckpt.Store, tmp_path: Path) -> None:
    key = _write_key(tmp_path, "locked.pem", ec.generate_private_key(ec.SECP256R1()), password=b"s3cret")
    with pytest.raises(RecordError, match="encrypted"):
        store.freeze("main", name=RELEASE, signer=key)
    assert RELEASE not in store.tags()  # nothing was frozen
    result = CliRunner().invoke(
        cli, ["--store", str(_root(store)), "freeze", "main", "--name", RELEASE, "--sign", str(key)], input="s3cret\n"
    )
    assert result.exit_code == 0, result.output
    assert store.verify(trust=[_pub(key)]).ok


@pytest.mark.parametrize("bad", ["rsa", "garbage", "private-in-trust", "empty"])
def test_keys_that_cannot_be_used(store: ckpt.Store, keys: dict[str, Path], tmp_path: Path, bad: str) -> None:
    if bad == "rsa":
        key = _write_key(tmp_path, "rsa.pem", rsa.generate_private_key(public_exponent=65537, key_size=2048))
        with pytest.raises(RecordError, match="unsupported key type"):
            store.freeze("main", name=RELEASE, signer=key)
        return
    path = tmp_path / "trust"
    path.write_bytes({"garbage": b"ssh-ed25519 not-base64 x\n", "empty": b"# nothing\n"}.get(bad, b""))
    if bad == "private-in-trust":
        path = keys["ec"]
    with pytest.raises(RecordError) as info:
        store.verify(trust=[path])
    assert info.value.hint


# -- sync and restore ---------------------------------------------------------------------------------


def test_sync_carries_signatures(store: ckpt.Store, keys: dict[str, Path], tmp_path: Path) -> None:
    store.freeze("main", name=RELEASE, signer=keys["ed"])
    replica = ckpt.init(str(tmp_path / "replica"), chunk_size=64)
    ckpt.sync(store, replica)
    assert replica.verify(trust=[_pub(keys["ed"])]).ok
    store.sign_release(RELEASE, keys["ec"])  # a second signer, later
    ckpt.sync(store, replica)
    assert replica.verify(trust=[_pub(keys["ec"])]).ok


def _model_signing_verifies(folder: Path, signature: Path, public_key: Path) -> bool:
    model_signing = pytest.importorskip("model_signing")
    try:
        model_signing.verifying.Config().use_elliptic_key_verifier(public_key=public_key).verify(folder, signature)
    except ValueError:
        return False
    return True


def test_restore_writes_a_signature_model_signing_verifies(
    store: ckpt.Store, keys: dict[str, Path], tmp_path: Path
) -> None:
    pytest.importorskip("model_signing")
    store.freeze("main", name=RELEASE, signer=keys["ec"], message="the release")
    out = tmp_path / "out"
    result = CliRunner().invoke(
        cli, ["--store", str(_root(store)), "restore", RELEASE, "--to", str(out), "--sign", str(keys["ec"])]
    )
    assert result.exit_code == 0, result.output
    assert (out / "model.sig").is_file()
    assert _model_signing_verifies(out, out / "model.sig", _pub(keys["ec"]))
    assert not _model_signing_verifies(out, out / "model.sig", _pub(keys["p384"]))  # another key
    weights = out / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 1
    weights.write_bytes(bytes(data))
    assert not _model_signing_verifies(out, out / "model.sig", _pub(keys["ec"]))  # a changed byte


def test_restore_signs_only_what_was_signed(store: ckpt.Store, keys: dict[str, Path], tmp_path: Path) -> None:
    pytest.importorskip("model_signing")
    store.freeze("main", name=RELEASE, signer=keys["ec"])
    store.freeze("main~1", name="unsigned-release")
    url = str(_root(store))
    runner = CliRunner()
    for rev, key, why in [
        ("unsigned-release", keys["ec"], "no signature"),
        ("main", keys["ec"], "not a frozen release"),
        (RELEASE, keys["p384"], "do not trust"),  # signed, but by another key
        (RELEASE, keys["ed"], "ECDSA keys only"),  # model-signing takes no Ed25519 key
    ]:
        out = tmp_path / f"out-{rev}-{key.name}"
        result = runner.invoke(cli, ["--store", url, "restore", rev, "--to", str(out), "--sign", str(key)])
        assert result.exit_code == 1 and why in result.output, (rev, key.name, result.output)
        assert not out.exists()  # refused before anything was written
    # a release signed by a trusted key can be re-signed for distribution with another EC key
    out = tmp_path / "out"
    args = ["--store", url, "restore", RELEASE, "--to", str(out), "--sign", str(keys["p384"])]
    result = runner.invoke(cli, [*args, "--trust", str(_pub(keys["ec"]))])
    assert result.exit_code == 0, result.output
    assert _model_signing_verifies(out, out / "model.sig", _pub(keys["p384"]))
    with pytest.raises(SignatureError):
        from ckpt.store._signing import require_signed_release

        require_signed_release(store, "unsigned-release", load_trusted_keys([_pub(keys["ec"])]))


def test_golden_signature_record() -> None:
    """The stored form of a signature (docs/format.md): Ed25519 signatures are deterministic, so the bytes are
    fixed for a fixed key, release, snapshot and time."""
    key = ed25519.Ed25519PrivateKey.from_private_bytes(bytes(range(32)))
    record = ReleaseSigner(key, name="alice@lab").sign(RELEASE, "a" * 64, signed_at="2026-11-28T10:00:00.000000Z")
    data = canonical_json(record.model_dump(mode="json"))
    golden = Path(__file__).parent.parent / "golden"
    assert data == (golden / "signature.json").read_bytes().rstrip(b"\n")
    assert digest_bytes(data) == (golden / "signature.id").read_text().strip()
    statement = json.loads(record.statement)
    assert list(statement) == ["key_id", "release", "signed_at", "signer", "snapshot", "type"]
