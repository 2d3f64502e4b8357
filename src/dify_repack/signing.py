"""Sign packages so a plugin daemon with signature verification on installs them (DAEMON-FACTS §6).

The daemon hashes every file entry in zip order, appends the decimal signing time and checks an RSA
PKCS#1 v1.5 / SHA-256 signature kept in the zip comment, against the official key plus the PEM files
named in ``THIRD_PARTY_SIGNATURE_VERIFICATION_PUBLIC_KEYS``. It reads public keys only as PKCS#1 PEM,
parsed as strictly as Go's ``pem.Decode`` (``pkg/utils/encryption/rsa.go``); the checks here mirror that.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
import stat
import tempfile
import time
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from .errors import EnvironmentProblem, SignatureError, UsageError
from .files import atomic_output, file_sha256, write_atomically
from .package import SIGNATURE_FILE, entry_digests, extract_package, iter_files, open_package, write_package
from .redaction import shown_line

# The daemon's ``authorized_category`` values; Dify's installation scopes (enterprise) filter on them.
CATEGORIES = ("community", "partner", "langgenius")
DEFAULT_CATEGORY = "community"
# Go 1.24 refuses RSA keys under 1024 bits; 2048 is the floor anyone should still use. Above 16384 bits key
# generation takes hours and no verifier gains anything.
MIN_BITS = 2048
MAX_BITS = 16384
_MAX_VERIFICATION_BYTES = 4096
_PEM_BEGIN = re.compile(rb"-----BEGIN ([A-Z0-9 ]+)-----")
_PRIVATE_BLOCKS = ("RSA PRIVATE KEY", "PRIVATE KEY", "ENCRYPTED PRIVATE KEY")
_PUBLIC_BLOCKS = ("RSA PUBLIC KEY", "PUBLIC KEY")


@dataclass(frozen=True)
class SignatureInfo:
    """A package's signature: ``verified`` only when checked against a public key."""

    signed: bool
    verified: bool
    time: int  # unix seconds, as signed
    category: str | None  # None: no .verification.dify.json (old official packages)


@dataclass(frozen=True)
class _Claim:
    signature: bytes
    time: int
    category: str | None


def generate_keypair(name_prefix: Path, bits: int = 4096) -> tuple[Path, Path]:
    """Write ``NAME.private.pem`` (0600) and ``NAME.public.pem``, PKCS#1 PEM; never overwrite either."""
    if bits < MIN_BITS:
        raise UsageError(f"a {bits}-bit RSA key is too weak", tip=f"use at least {MIN_BITS} bits (4096 is the default)")
    if bits > MAX_BITS:
        raise UsageError(
            f"a {bits}-bit RSA key would take hours to generate",
            tip=f"use at most {MAX_BITS} bits (4096 is the default)",
        )
    if not name_prefix.name or name_prefix.is_dir():
        raise UsageError(
            f"{name_prefix}: is a directory, not a key name",
            tip="give a name prefix: keys/ci writes keys/ci.private.pem and keys/ci.public.pem",
        )
    private_path = name_prefix.with_name(name_prefix.name + ".private.pem")
    public_path = name_prefix.with_name(name_prefix.name + ".public.pem")
    for path in (private_path, public_path):
        if path.exists():
            raise UsageError(
                f"{path}: already exists; refusing to overwrite a key",
                tip="choose another NAME, or delete the old pair on purpose: "
                "packages signed with it stop verifying once the daemon no longer trusts its public key",
            )
    key = rsa.generate_private_key(public_exponent=65537, key_size=bits)
    private_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.NoEncryption(),
    )
    public_pem = key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.PKCS1)
    try:
        private_path.parent.mkdir(parents=True, exist_ok=True)
        # A key reported as written must survive a power cut: losing it orphans what it signed.
        write_atomically(private_path, private_pem, mode=0o600, durable=True)
        write_atomically(public_path, public_pem, durable=True)
    except OSError as exc:
        raise EnvironmentProblem.cannot_write(private_path.parent, exc, elsewhere="NAME") from None
    return private_path, public_path


def key_permission_warning(path: Path) -> str | None:
    """A warning when a private key file can be read by its group or by everyone, else None."""
    try:
        mode = path.stat().st_mode
        with path.open("rb") as handle:
            head = handle.read(4096)
    except OSError:
        return None
    block = _PEM_BEGIN.search(head)
    # A public key (or anything else) given by mistake is refused later, with its own message.
    if block is None or block.group(1).decode() not in _PRIVATE_BLOCKS:
        return None
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        return (
            f"{path}: the private key is readable by others (mode {stat.S_IMODE(mode):04o}); "
            f"anyone who reads it can sign packages your daemons trust: chmod 600 {path}"
        )
    return None


def load_private_key(path: Path) -> rsa.RSAPrivateKey:
    """Read an unencrypted RSA private key, PEM PKCS#1 (``BEGIN RSA PRIVATE KEY``) or PKCS#8."""
    data = _read_key_file(path)
    kind = _pem_block_type(data, path)
    if kind in _PUBLIC_BLOCKS:
        raise SignatureError(
            f"{path}: is a public key; signing needs the private key",
            tip="pass NAME.private.pem (from `dify-repack keygen NAME`) to --key",
        )
    if kind not in _PRIVATE_BLOCKS:
        raise SignatureError(
            f"{path}: a '{kind}' PEM block is not an RSA private key",
            tip="create a key pair with `dify-repack keygen NAME`",
        )
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except TypeError:
        raise SignatureError(
            f"{path}: the private key is encrypted (password-protected)",
            tip=f"write a decrypted copy with `openssl rsa -in {path} -out PLAIN.pem` and keep it mode 0600",
        ) from None
    except ValueError as exc:
        raise SignatureError(f"{path}: not a readable PEM private key: {exc}") from None
    if not isinstance(key, rsa.RSAPrivateKey):
        raise SignatureError(
            f"{path}: holds a {type(key).__name__}; the plugin daemon verifies RSA signatures only",
            tip="create an RSA key pair with `dify-repack keygen NAME`",
        )
    return key


def load_public_key(path: Path) -> rsa.RSAPublicKey:
    """Read a public key the way the daemon does: PEM PKCS#1 (``BEGIN RSA PUBLIC KEY``), nothing after it."""
    data = _read_key_file(path)
    kind = _pem_block_type(data, path)
    if kind == "PUBLIC KEY":
        raise SignatureError(
            f"{path}: is an SPKI public key ('BEGIN PUBLIC KEY'); the plugin daemon rejects SPKI "
            "and reads only PKCS#1 ('BEGIN RSA PUBLIC KEY')",
            tip=f"convert it: openssl rsa -pubin -in {path} -RSAPublicKey_out -out NAME.public.pem",
        )
    if kind in _PRIVATE_BLOCKS:
        raise SignatureError(
            f"{path}: is a private key; verification (and the daemon) needs the public key",
            tip="pass NAME.public.pem; never copy the private key to the Dify host",
        )
    if kind != "RSA PUBLIC KEY":
        raise SignatureError(f"{path}: a '{kind}' PEM block is not an RSA public key")
    _check_nothing_after_block(data, kind, path)
    try:
        key = serialization.load_pem_public_key(data)
    except ValueError as exc:
        raise SignatureError(f"{path}: not a readable PKCS#1 public key: {exc}") from None
    assert isinstance(key, rsa.RSAPublicKey)  # a PKCS#1 block can only hold an RSA key
    return key


def _read_key_file(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except (FileNotFoundError, IsADirectoryError):
        raise UsageError(f"{path}: no such key file", tip="create a key pair with `dify-repack keygen NAME`") from None


def _pem_block_type(data: bytes, path: Path) -> str:
    match = _PEM_BEGIN.search(data)
    if match is None:
        raise SignatureError(
            f"{path}: not a PEM key (no '-----BEGIN ...-----' line)",
            tip="create a key pair with `dify-repack keygen NAME`",
        )
    return match.group(1).decode()


def _check_nothing_after_block(data: bytes, kind: str, path: Path) -> None:
    # Go's pem.Decode consumes the END line and its one line break; the daemon then refuses any byte left
    # ("extra data included in the PEM block"), and one refused key makes it verify no package at all.
    end = data.find(f"-----END {kind}-----".encode())
    if end < 0:
        raise SignatureError(f"{path}: the PEM block has no '-----END {kind}-----' line")
    line_break = data.find(b"\n", end)
    rest = b"" if line_break < 0 else data[line_break + 1 :]
    if rest:
        raise SignatureError(
            f"{path}: {len(rest)} byte(s) follow the END line; the plugin daemon rejects such a key file "
            "and then verifies no package at all",
            tip=f"delete everything after '-----END {kind}-----' and its line break, blank lines included",
        )


def sign_package(
    package: Path, key: Path, output: Path, *, category: str = DEFAULT_CATEGORY, now: int | None = None
) -> SignatureInfo:
    """Write ``package`` signed with the private ``key`` to ``output`` (which may be ``package``, never ``key``).

    Any old signature and ``.verification.dify.json`` are replaced; entries are written sorted by path.
    The result is verified with the key's public half before it replaces ``output``.
    """
    if same_file(output, key):
        raise UsageError(
            f"{output}: is the private key; refusing to overwrite it with a package",
            tip="write the signed package elsewhere (the default is PACKAGE.signed.difypkg beside it)",
        )
    with tempfile.TemporaryDirectory(prefix="dify-repack-sign-") as temp:
        root = Path(temp)
        extract_package(package, root)
        return sign_tree(root, key, output, category=category, now=now, origin=package)


def same_file(a: Path, b: Path) -> bool:
    """Whether two paths name one file (through links too); False when either cannot be looked at."""
    try:
        return a.resolve() == b.resolve() or (a.exists() and b.exists() and a.samefile(b))
    except OSError:
        return False


def sign_tree(
    root: Path,
    key: Path,
    output: Path,
    *,
    category: str = DEFAULT_CATEGORY,
    now: int | None = None,
    origin: Path | None = None,
) -> SignatureInfo:
    """Write the files below ``root`` as a package signed with ``key`` (pack signs its tree this way, in one pass).

    ``root`` gains the ``.verification.dify.json``; ``origin`` names the package in messages.
    """
    origin = origin or root
    if category not in CATEGORIES:
        raise UsageError(f"unknown category {category!r}", tip=f"use one of: {', '.join(CATEGORIES)}")
    private_key = load_private_key(key)
    key_size, key_digest = key.stat().st_size, file_sha256(key)
    signed_at = int(time.time()) if now is None else now
    (root / SIGNATURE_FILE).write_bytes(_verification_json(category))
    names = iter_files(root)
    for name in names:
        # Only a file of the key's size can be the key: the others are hashed once, by write_package.
        if (root / name).stat().st_size == key_size and file_sha256(root / name) == key_digest:
            raise SignatureError(
                f"{origin}: entry {shown_line(name)} is the private key {key}; refusing to sign a package that would publish it",
                tip="remove the key from the plugin (or list it in .difyignore)",
            )

    def signed(digests: Sequence[tuple[str, str]]) -> bytes:
        payload = b"".join(bytes.fromhex(digest) for _, digest in digests) + str(signed_at).encode()
        signature = private_key.sign(payload, padding.PKCS1v15(), hashes.SHA256())
        return json.dumps(
            {"signature": base64.b64encode(signature).decode("ascii"), "time": signed_at},
            separators=(",", ":"),
        ).encode()

    with atomic_output(output) as staged:
        write_package(root, staged, names=names, comment=signed)
        # Re-read what was written, as the daemon will: a signature that fails never leaves here.
        return _verify(staged, private_key.public_key(), shown_as=output)


def _verification_json(category: str) -> bytes:
    # Byte-for-byte what the official signer writes (Go's json.Marshal: compact, no trailing newline).
    return json.dumps({"authorized_category": category}, separators=(",", ":")).encode()


def verify_signature(package: Path, public_key: Path) -> SignatureInfo:
    """Check ``package``'s signature against one public key as the daemon does; SignatureError if not."""
    return _verify(package, load_public_key(public_key), shown_as=package)


def read_signature(package: Path) -> SignatureInfo | None:
    """The package's signature, unverified (no key needed), or None when it is unsigned."""
    with open_package(package) as archive:
        claim = _read_claim(archive, package)
    if claim is None:
        return None
    return SignatureInfo(signed=True, verified=False, time=claim.time, category=claim.category)


def _verify(package: Path, key: rsa.RSAPublicKey, *, shown_as: Path) -> SignatureInfo:
    with open_package(package, shown_as=shown_as) as archive:
        # Every entry is read first: a corrupt package is a bad package (exit 3), signed or not.
        digests = _signed_digests(archive)
        claim = _read_claim(archive, shown_as)
        if claim is None:
            raise SignatureError(
                f"{shown_as}: is not signed (its zip comment is empty)",
                tip=f"sign it: dify-repack sign {shown_as} --key NAME.private.pem",
            )
        payload = digests + str(claim.time).encode()
    try:
        key.verify(claim.signature, payload, padding.PKCS1v15(), hashes.SHA256())
    except InvalidSignature:
        raise SignatureError(
            f"{shown_as}: the signature does not match this public key: the package changed after signing, "
            "or another key signed it",
            tip="sign it again with the private key that belongs to this public key (dify-repack sign)",
        ) from None
    return SignatureInfo(signed=True, verified=True, time=claim.time, category=claim.category)


def _read_claim(archive: zipfile.ZipFile, package: Path) -> _Claim | None:
    if not archive.comment.strip():
        return None
    try:
        comment = json.loads(archive.comment)
        signature = base64.b64decode(comment["signature"], validate=True)
        signed_at = comment["time"]
    except (ValueError, TypeError, KeyError, binascii.Error, RecursionError):  # RecursionError: "[[[…" nesting
        raise SignatureError(
            f"{package}: the zip comment is not a Dify signature: {archive.comment[:80]!r}",
            tip="sign it again: dify-repack sign PACKAGE --key NAME.private.pem",
        ) from None
    # bool is an int in Python but not in Go's JSON decoder, which would reject the comment.
    if not signature or type(signed_at) is not int:
        raise SignatureError(f"{package}: the zip comment lacks a signature or an integer 'time'")
    return _Claim(signature, signed_at, _read_category(archive, package))


def _read_category(archive: zipfile.ZipFile, package: Path) -> str | None:
    try:
        info = archive.getinfo(SIGNATURE_FILE)
    except KeyError:
        return None
    if info.file_size > _MAX_VERIFICATION_BYTES:
        raise SignatureError(f"{package}: {SIGNATURE_FILE} is {info.file_size} bytes; the real one is a few dozen")
    raw = archive.read(info)
    try:
        category = json.loads(raw)["authorized_category"]
    except (ValueError, TypeError, KeyError, RecursionError):
        category = None
    if not isinstance(category, str):
        # The daemon fails to decode it and then treats the package as unverified, whatever the signature.
        raise SignatureError(f"{package}: {SIGNATURE_FILE} is not valid JSON with an 'authorized_category'")
    return category


def _signed_digests(archive: zipfile.ZipFile) -> bytes:
    # open_package already refused duplicate names, which would make the daemon's reading unpredictable.
    return b"".join(digest for _, digest in entry_digests(archive))


def trust_instructions(public_key: Path) -> str:
    """What to change on a docker compose Dify host so its plugin daemon trusts ``public_key``."""
    name = public_key.name
    return "\n".join(
        [
            "To make Dify's plugin daemon trust this key, in Dify's docker/ folder:",
            f"  1. Copy the public key (never the private one) to keys/{name} there",
            "  2. Create docker-compose.override.yaml with:",
            "       services:",
            "         plugin_daemon:",
            "           environment:",
            '             THIRD_PARTY_SIGNATURE_VERIFICATION_ENABLED: "true"',
            f"             THIRD_PARTY_SIGNATURE_VERIFICATION_PUBLIC_KEYS: /app/keys/{name}",
            "           volumes:",
            "             - ./keys:/app/keys:ro",
            "     (.env lines alone do nothing: Dify's compose file does not pass them to the daemon)",
            "  3. Apply it: docker compose up -d plugin_daemon",
            "FORCE_VERIFYING_SIGNATURE can then stay true. If any listed key file cannot be read, the daemon",
            "verifies no package at all, Marketplace ones included.",
        ]
    )
