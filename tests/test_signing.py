"""Signing: packages we sign must pass the plugin daemon's verifier, and nothing else may.

``daemon_verifies`` below re-implements the daemon's check from DAEMON-FACTS §6 and
``pkg/plugin_packager/decoder/verifier.go`` on its own, so a shared mistake in signing.py cannot hide.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import stat
import subprocess
import zipfile
from pathlib import Path

import pytest
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from builders import make_plugin
from dify_repack.cli import main
from dify_repack.errors import ExitCode, PackageError, SignatureError, UsageError
from dify_repack.inspect import inspect_package
from dify_repack.package import SIGNATURE_FILE, write_package
from dify_repack.signing import (
    SignatureInfo,
    generate_keypair,
    load_private_key,
    load_public_key,
    read_signature,
    sign_package,
    verify_signature,
)

BITS = 2048  # fast enough for tests; the default is 4096
NOW = 1_760_000_000
PLUGIN_FILES = {
    "manifest.yaml": b"version: 0.0.1\ntype: plugin\nauthor: someone\nname: demo\n",
    "main.py": b"print('hello')\n",
    "_assets/icon.svg": b"<svg/>",
    "requirements.txt": b"--no-index\n--find-links=./wheels/\ndify_plugin==0.4.0\n",
    "wheels/demo-1.0-py3-none-any.whl": bytes(range(256)) * 8,
}


def daemon_verifies(package: Path, public_pem: bytes) -> bool:
    """The daemon's verification, written from the spec: PKCS#1 key, file entries in zip order, then time."""
    block = re.search(rb"-----BEGIN ([A-Z ]+)-----", public_pem)
    if block is None or block.group(1) != b"RSA PUBLIC KEY":
        return False
    key = serialization.load_pem_public_key(public_pem)
    assert isinstance(key, rsa.RSAPublicKey)
    with zipfile.ZipFile(package) as archive:
        comment = json.loads(archive.comment)
        data = b"".join(hashlib.sha256(archive.read(info)).digest() for info in archive.infolist() if not info.is_dir())
    data += str(comment["time"]).encode()
    try:
        key.verify(base64.b64decode(comment["signature"]), data, padding.PKCS1v15(), hashes.SHA256())
    except InvalidSignature:
        return False
    return True


def make_package(tmp_path: Path, files: dict[str, bytes] | None = None, name: str = "demo.difypkg") -> Path:
    root = tmp_path / f"{name}-src"
    for relative, content in (files or PLUGIN_FILES).items():
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content)
    output = tmp_path / name
    write_package(root, output)
    return output


def rewrite(package: Path, output: Path, entries: list[tuple[str, bytes]]) -> None:
    """Write ``entries`` in the given order with ``package``'s comment (its signature) kept."""
    with zipfile.ZipFile(package) as archive:
        comment = archive.comment
    with zipfile.ZipFile(output, "w") as archive:
        for name, content in entries:
            archive.writestr(name, content)
        archive.comment = comment


def entries_of(package: Path) -> list[tuple[str, bytes]]:
    with zipfile.ZipFile(package) as archive:
        return [(info.filename, archive.read(info)) for info in archive.infolist()]


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return generate_keypair(tmp_path_factory.mktemp("keys") / "test", bits=BITS)


@pytest.fixture(scope="module")
def other_keys(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return generate_keypair(tmp_path_factory.mktemp("other") / "other", bits=BITS)


@pytest.fixture
def signed(tmp_path: Path, keys: tuple[Path, Path]) -> Path:
    output = tmp_path / "demo.signed.difypkg"
    sign_package(make_package(tmp_path), keys[0], output, now=NOW)
    return output


# --- keys ---------------------------------------------------------------------------------------------


def test_keygen_writes_pkcs1_pems_private_one_0600(keys: tuple[Path, Path]) -> None:
    private, public = keys
    assert private.name == "test.private.pem"
    assert public.name == "test.public.pem"
    assert private.read_bytes().startswith(b"-----BEGIN RSA PRIVATE KEY-----\n")
    assert public.read_bytes().startswith(b"-----BEGIN RSA PUBLIC KEY-----\n")
    # Go's pem.Decode leaves nothing after the END line's break only if there is exactly one.
    assert public.read_bytes().endswith(b"-----END RSA PUBLIC KEY-----\n")
    assert stat.S_IMODE(private.stat().st_mode) == 0o600
    assert load_private_key(private).key_size == BITS
    assert load_public_key(public).public_numbers() == load_private_key(private).public_key().public_numbers()


def test_keygen_refuses_to_overwrite(keys: tuple[Path, Path]) -> None:
    private, public = keys
    before = private.read_bytes(), public.read_bytes()
    with pytest.raises(UsageError, match="already exists"):
        generate_keypair(private.with_name("test"), bits=BITS)
    assert (private.read_bytes(), public.read_bytes()) == before


def test_keygen_refuses_when_only_the_public_half_exists(tmp_path: Path) -> None:
    (tmp_path / "half.public.pem").write_text("old")
    with pytest.raises(UsageError, match=r"half\.public\.pem: already exists"):
        generate_keypair(tmp_path / "half", bits=BITS)
    assert not (tmp_path / "half.private.pem").exists()


def test_keygen_rejects_weak_keys_and_leaves_no_files(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="too weak"):
        generate_keypair(tmp_path / "weak", bits=1024)
    assert list(tmp_path.iterdir()) == []


def test_spki_public_key_is_rejected_with_the_conversion_command(tmp_path: Path, keys: tuple[Path, Path]) -> None:
    spki = tmp_path / "spki.pem"
    spki.write_bytes(
        load_public_key(keys[1]).public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    with pytest.raises(SignatureError, match="SPKI") as caught:
        load_public_key(spki)
    assert caught.value.tip is not None
    assert "-RSAPublicKey_out" in caught.value.tip


def test_public_key_with_a_trailing_blank_line_is_rejected(tmp_path: Path, keys: tuple[Path, Path]) -> None:
    padded = tmp_path / "padded.public.pem"
    padded.write_bytes(keys[1].read_bytes() + b"\n")
    with pytest.raises(SignatureError, match="follow the END line"):
        load_public_key(padded)


def test_private_and_public_keys_are_not_interchangeable(tmp_path: Path, keys: tuple[Path, Path]) -> None:
    private, public = keys
    with pytest.raises(SignatureError, match="is a private key"):
        load_public_key(private)
    with pytest.raises(SignatureError, match="is a public key"):
        load_private_key(public)


def test_pkcs8_private_key_signs(tmp_path: Path, keys: tuple[Path, Path]) -> None:
    pkcs8 = tmp_path / "pkcs8.pem"
    pkcs8.write_bytes(
        load_private_key(keys[0]).private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    output = tmp_path / "out.difypkg"
    sign_package(make_package(tmp_path), pkcs8, output, now=NOW)
    assert daemon_verifies(output, keys[1].read_bytes())


def test_encrypted_private_key_is_explained(tmp_path: Path, keys: tuple[Path, Path]) -> None:
    locked = tmp_path / "locked.pem"
    locked.write_bytes(
        load_private_key(keys[0]).private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.TraditionalOpenSSL,
            serialization.BestAvailableEncryption(b"secret"),
        )
    )
    with pytest.raises(SignatureError, match="encrypted"):
        load_private_key(locked)


# --- signing ------------------------------------------------------------------------------------------


def test_daemon_algorithm_accepts_our_signature(signed: Path, keys: tuple[Path, Path]) -> None:
    assert daemon_verifies(signed, keys[1].read_bytes())
    assert verify_signature(signed, keys[1]) == SignatureInfo(
        signed=True, verified=True, time=NOW, category="community"
    )


def test_signed_package_layout(signed: Path) -> None:
    with zipfile.ZipFile(signed) as archive:
        names = [info.filename for info in archive.infolist()]
        comment = json.loads(archive.comment)
        verification = archive.read(SIGNATURE_FILE)
    assert names == sorted([*PLUGIN_FILES, SIGNATURE_FILE])
    assert not any(name.endswith("/") for name in names)
    assert set(comment) == {"signature", "time"}
    assert comment["time"] == NOW
    assert verification == b'{"authorized_category":"community"}'


def test_openssl_agrees_and_the_spki_tip_converts_back(tmp_path: Path, signed: Path, keys: tuple[Path, Path]) -> None:
    with zipfile.ZipFile(signed) as archive:
        comment = json.loads(archive.comment)
        payload = b"".join(hashlib.sha256(archive.read(info)).digest() for info in archive.infolist())
    (tmp_path / "payload").write_bytes(payload + str(comment["time"]).encode())
    (tmp_path / "sig").write_bytes(base64.b64decode(comment["signature"]))
    openssl = ["openssl", "dgst", "-sha256", "-verify", str(keys[1]), "-signature", "sig", "payload"]
    assert subprocess.run(openssl, cwd=tmp_path, capture_output=True, check=False).returncode == 0
    spki, back = tmp_path / "spki.pem", tmp_path / "back.pem"
    to_spki = ["openssl", "rsa", "-RSAPublicKey_in", "-in", str(keys[1]), "-pubout", "-out", str(spki)]
    subprocess.run(to_spki, capture_output=True, check=True)
    with pytest.raises(SignatureError) as caught:
        load_public_key(spki)
    assert caught.value.tip is not None
    command = caught.value.tip.removeprefix("convert it: ").replace("NAME.public.pem", str(back)).split()
    subprocess.run(command, capture_output=True, check=True)
    assert back.read_bytes() == keys[1].read_bytes()


@pytest.mark.parametrize("victim", sorted([*PLUGIN_FILES, SIGNATURE_FILE]))
def test_changing_one_byte_of_any_file_breaks_the_signature(
    tmp_path: Path, signed: Path, keys: tuple[Path, Path], victim: str
) -> None:
    # Near the end, so .verification.dify.json stays valid JSON and only its category letter changes.
    entries = [
        (name, content[:-3] + bytes([content[-3] ^ 1]) + content[-2:] if name == victim else content)
        for name, content in entries_of(signed)
    ]
    tampered = tmp_path / "tampered.difypkg"
    rewrite(signed, tampered, entries)
    assert not daemon_verifies(tampered, keys[1].read_bytes())
    with pytest.raises(SignatureError, match="does not match"):
        verify_signature(tampered, keys[1])


def test_reordering_entries_breaks_the_signature(tmp_path: Path, signed: Path, keys: tuple[Path, Path]) -> None:
    reordered = tmp_path / "reordered.difypkg"
    rewrite(signed, reordered, list(reversed(entries_of(signed))))
    assert not daemon_verifies(reordered, keys[1].read_bytes())
    with pytest.raises(SignatureError, match="does not match"):
        verify_signature(reordered, keys[1])


def test_another_key_does_not_verify(signed: Path, other_keys: tuple[Path, Path]) -> None:
    assert not daemon_verifies(signed, other_keys[1].read_bytes())
    with pytest.raises(SignatureError, match="does not match"):
        verify_signature(signed, other_keys[1])


def test_resigning_replaces_signature_and_verification_file(
    tmp_path: Path, signed: Path, other_keys: tuple[Path, Path]
) -> None:
    again = tmp_path / "again.difypkg"
    info = sign_package(signed, other_keys[0], again, category="partner", now=NOW + 60)
    assert info == SignatureInfo(signed=True, verified=True, time=NOW + 60, category="partner")
    names = [name for name, _ in entries_of(again)]
    assert names.count(SIGNATURE_FILE) == 1
    assert daemon_verifies(again, other_keys[1].read_bytes())


def test_stale_verification_file_in_an_unsigned_package_is_replaced(tmp_path: Path, keys: tuple[Path, Path]) -> None:
    stale = make_package(tmp_path, {**PLUGIN_FILES, SIGNATURE_FILE: b'{"authorized_category":"langgenius"}'})
    output = tmp_path / "out.difypkg"
    assert sign_package(stale, keys[0], output, now=NOW).category == "community"
    assert dict(entries_of(output))[SIGNATURE_FILE] == b'{"authorized_category":"community"}'


def test_signing_in_place_and_deterministically(tmp_path: Path, keys: tuple[Path, Path]) -> None:
    package = make_package(tmp_path)
    copy = tmp_path / "copy.difypkg"
    sign_package(package, keys[0], copy, now=NOW)
    sign_package(package, keys[0], package, now=NOW)
    # PKCS#1 v1.5 is deterministic and the zip is written with fixed timestamps: same input, same bytes.
    assert package.read_bytes() == copy.read_bytes()
    assert daemon_verifies(package, keys[1].read_bytes())
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".part")] == []


def test_private_key_is_never_packaged(tmp_path: Path, keys: tuple[Path, Path], signed: Path) -> None:
    assert all(b"PRIVATE KEY" not in content for _, content in entries_of(signed))
    leaky = make_package(tmp_path, {**PLUGIN_FILES, "keys/test.private.pem": keys[0].read_bytes()}, "leaky.difypkg")
    output = tmp_path / "leaky.signed.difypkg"
    with pytest.raises(SignatureError, match="is the private key"):
        sign_package(leaky, keys[0], output, now=NOW)
    assert not output.exists()


def test_unknown_category_is_a_usage_error(tmp_path: Path, keys: tuple[Path, Path]) -> None:
    with pytest.raises(UsageError, match="category"):
        sign_package(make_package(tmp_path), keys[0], tmp_path / "out.difypkg", category="official")


def test_read_signature_without_a_key(tmp_path: Path, signed: Path) -> None:
    assert read_signature(make_package(tmp_path, name="plain.difypkg")) is None
    assert read_signature(signed) == SignatureInfo(signed=True, verified=False, time=NOW, category="community")


def test_unsigned_package_fails_verification(tmp_path: Path, keys: tuple[Path, Path]) -> None:
    with pytest.raises(SignatureError, match="not signed"):
        verify_signature(make_package(tmp_path), keys[1])


def test_garbage_comment_is_not_a_signature(tmp_path: Path, signed: Path, keys: tuple[Path, Path]) -> None:
    with zipfile.ZipFile(signed, "a") as archive:
        archive.comment = b"made by some zip tool"
    with pytest.raises(SignatureError, match="not a Dify signature"):
        read_signature(signed)
    with pytest.raises(SignatureError, match="not a Dify signature"):
        verify_signature(signed, keys[1])


def test_broken_verification_file_fails_like_in_the_daemon(
    tmp_path: Path, signed: Path, keys: tuple[Path, Path]
) -> None:
    broken = tmp_path / "broken.difypkg"
    rewrite(signed, broken, [(n, b"{" if n == SIGNATURE_FILE else c) for n, c in entries_of(signed)])
    with pytest.raises(SignatureError, match="not valid JSON"):
        verify_signature(broken, keys[1])


def test_duplicate_entries_are_refused(tmp_path: Path, signed: Path, keys: tuple[Path, Path]) -> None:
    doubled = tmp_path / "doubled.difypkg"
    entries = entries_of(signed)
    with pytest.warns(UserWarning, match="Duplicate name"):
        rewrite(signed, doubled, [*entries, entries[-1]])
    # The shared entry check (package.open_package) refuses it before any signature is looked at.
    with pytest.raises(PackageError, match="appears twice"):
        verify_signature(doubled, keys[1])


# --- command line -------------------------------------------------------------------------------------


def test_cli_keygen_prints_paths_and_daemon_settings(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    name = tmp_path / "keys" / "offline"
    assert main(["keygen", str(name), "--bits", str(BITS)]) == ExitCode.OK
    out = capsys.readouterr().out
    assert str(name) + ".private.pem" in out
    assert str(name) + ".public.pem" in out
    assert 'THIRD_PARTY_SIGNATURE_VERIFICATION_ENABLED: "true"' in out
    assert "THIRD_PARTY_SIGNATURE_VERIFICATION_PUBLIC_KEYS: /app/keys/offline.public.pem" in out
    assert "FORCE_VERIFYING_SIGNATURE can then stay true" in out
    assert main(["keygen", str(name), "--bits", str(BITS)]) == ExitCode.USAGE


def test_cli_sign_writes_beside_the_input_and_leaves_it_alone(
    tmp_path: Path, keys: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    package = make_package(tmp_path, name="demo-offline.difypkg")
    before = package.read_bytes()
    assert main(["sign", str(package), "--key", str(keys[0])]) == ExitCode.OK
    assert package.read_bytes() == before
    output = tmp_path / "demo-offline.signed.difypkg"
    assert str(output) in capsys.readouterr().out
    assert daemon_verifies(output, keys[1].read_bytes())


def test_cli_sign_with_output_and_category(tmp_path: Path, keys: tuple[Path, Path]) -> None:
    output = tmp_path / "elsewhere" / "x.difypkg"
    argv = [
        "sign",
        str(make_package(tmp_path)),
        "--key",
        str(keys[0]),
        "-o",
        str(output),
        "--category",
        "partner",
    ]
    assert main(argv) == ExitCode.OK
    assert verify_signature(output, keys[1]).category == "partner"


def test_cli_sign_errors(tmp_path: Path, keys: tuple[Path, Path]) -> None:
    package = make_package(tmp_path)
    assert main(["sign", str(package), "--key", str(tmp_path / "missing.pem")]) == ExitCode.USAGE
    assert main(["sign", str(package), "--key", str(keys[1])]) == ExitCode.SIGNATURE
    assert (
        main(["sign", str(tmp_path / "missing.difypkg"), "--key", str(keys[0])]) == ExitCode.USAGE
    )  # a missing input file is 2 everywhere
    assert main(["sign", str(package), "--key", str(keys[0]), "--category", "official"]) == ExitCode.USAGE


def test_cli_verify_signature_exit_codes(
    tmp_path: Path,
    signed: Path,
    keys: tuple[Path, Path],
    other_keys: tuple[Path, Path],
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["verify-signature", str(signed), "--key", str(keys[1])]) == ExitCode.OK
    assert "verified" in capsys.readouterr().out
    assert main(["verify-signature", str(signed), "--key", str(other_keys[1])]) == ExitCode.SIGNATURE
    unsigned = make_package(tmp_path, name="unsigned.difypkg")
    assert main(["verify-signature", str(unsigned), "--key", str(keys[1])]) == ExitCode.SIGNATURE
    spki = tmp_path / "spki.pem"
    spki.write_bytes(
        load_public_key(keys[1]).public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    assert main(["verify-signature", str(signed), "--key", str(spki)]) == ExitCode.SIGNATURE
    assert "RSAPublicKey_out" in capsys.readouterr().err


def test_inspect_shows_signed_unsigned_and_verified(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    private, public = generate_keypair(tmp_path / "k", bits=2048)
    _, other = generate_keypair(tmp_path / "other", bits=2048)
    package = tmp_path / "p.difypkg"
    write_package(make_plugin(tmp_path / "src", {"requirements.txt": "dify_plugin==0.7.4\n"}), package)
    assert inspect_package(package).signed is False
    signed = tmp_path / "signed.difypkg"
    sign_package(package, private, signed)
    assert inspect_package(signed).verified is None
    assert inspect_package(signed, public_key=public).verified is True
    assert inspect_package(signed, public_key=other).verified is False
    assert main(["inspect", str(signed), "--key", str(public)]) == 0
    assert "verified with the given key" in capsys.readouterr().out
