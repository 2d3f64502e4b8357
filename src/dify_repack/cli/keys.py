"""``keygen``, ``sign``, ``verify-signature``."""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path

import click

from ..errors import UsageError
from ..signing import (
    CATEGORIES,
    MAX_BITS,
    MIN_BITS,
    generate_keypair,
    key_permission_warning,
    same_file,
    sign_package,
    trust_instructions,
    verify_signature,
)
from ._app import (
    cli,
    emit,
    make_reporter,
    output,
    output_options,
    with_options,
)


def _utc(timestamp: int) -> str:
    return datetime.fromtimestamp(timestamp, tz=timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")


# Signing: keys, signatures and their verification as the daemon does it.


@cli.command("keygen")
@click.argument("name", type=click.Path(dir_okay=False))
@click.option(
    "--bits",
    type=click.IntRange(MIN_BITS, MAX_BITS),
    default=4096,
    show_default=True,
    help=f"RSA key size ({MIN_BITS} to {MAX_BITS}).",
)
@with_options(output_options)
def keygen_command(name: str, bits: int) -> None:
    """Create the key pair NAME.private.pem and NAME.public.pem for signing packages.

    \b
    Sign packages with the private key (written mode 0600; keep it off the Dify host). Give the
    plugin daemon the public key: it then installs the packages you signed while
    FORCE_VERIFYING_SIGNATURE stays true. Prints the docker compose lines that do it.
    Existing files are never overwritten.

    \b
    Examples:
      dify-repack keygen keys/offline
      dify-repack pack ./plugin.difypkg --sign-key keys/offline.private.pem
      dify-repack sign plugin-offline.difypkg --key keys/offline.private.pem
    """
    private, public = generate_keypair(Path(name), bits=bits)
    if output().as_json:
        emit("success", {"private_key": str(private), "public_key": str(public), "trust": trust_instructions(public)})
        return
    click.echo(f"private key: {private}  (mode 0600: signs packages; never copy it to Dify or into a plugin)")
    click.echo(f"public key:  {public}")
    if not output().quiet:
        click.echo()
        click.echo(trust_instructions(public))


@cli.command("sign")
@click.argument("package", type=click.Path(exists=True, dir_okay=False))
@click.option(
    "--key",
    required=True,
    type=click.Path(exists=True, dir_okay=False),
    help="The private key, PEM (NAME.private.pem from `dify-repack keygen NAME`).",
)
@click.option(
    "--category",
    type=click.Choice(CATEGORIES),
    default="community",
    show_default=True,
    help="The authorized_category written into the package; Dify's installation scopes filter on it.",
)
@click.option(
    "-o",
    "--output",
    "output_path",
    type=click.Path(dir_okay=False),
    help="Where to write the signed package; never PACKAGE or the key.  [default: PACKAGE with .signed.difypkg, beside it]",
)
@with_options(output_options)
def sign_command(package: str, key: str, category: str, output_path: str | None) -> None:
    """Sign PACKAGE so a plugin daemon that trusts your public key installs it.

    \b
    Replaces any earlier signature, writes a new package and checks the signature on it;
    PACKAGE itself is left untouched (-o naming it, or the key, is refused).

    \b
    Examples:
      dify-repack sign plugin-offline.difypkg --key keys/offline.private.pem
      # writes plugin-offline.signed.difypkg
      dify-repack sign plugin-offline.difypkg --key keys/offline.private.pem -o signed/plugin.difypkg
      # writes signed/plugin.difypkg (-o never replaces PACKAGE or the key)
    """
    source = Path(package)
    target = Path(output_path) if output_path else source.with_name(source.stem + ".signed.difypkg")
    if same_file(target, source):
        raise UsageError(
            f"{target}: is the input package; refusing to replace it",
            tip="write the signed package elsewhere with -o (the default is PACKAGE.signed.difypkg beside it)",
        )
    if warning := key_permission_warning(Path(key)):
        make_reporter().warn(warning)  # the core's warning line, shown even with -q
    info = sign_package(source, Path(key), target, category=category)
    if output().as_json:
        emit("success", {"package": str(target), "category": info.category, "time": info.time})
        return
    click.echo(f"signed: {target}  (category {info.category}, {_utc(info.time)})")
    stem = key.removesuffix(".private.pem")
    public = f"{stem}.public.pem" if stem != key else "NAME.public.pem"
    if not output().quiet:
        click.echo(f"check:  dify-repack verify-signature {target} --key {public}")


@cli.command("verify-signature")
@click.argument("package", type=click.Path(exists=True, dir_okay=False))
@click.option(
    "--key",
    required=True,
    type=click.Path(exists=True, dir_okay=False),
    help="The public key the daemon trusts: PEM PKCS#1, 'BEGIN RSA PUBLIC KEY' (NAME.public.pem).",
)
@with_options(output_options)
def verify_signature_command(package: str, key: str) -> None:
    """Check PACKAGE's signature against one public key, exactly as the plugin daemon does.

    \b
    Exits 0 when it verifies. Exits 8 when the package is unsigned, changed after signing or
    signed with another key, or when the key file is in a form the daemon would refuse (SPKI
    'BEGIN PUBLIC KEY', or anything after the END line): one refused key file makes the daemon
    verify no package at all, so check the exact file you mount into the daemon.

    \b
    Examples:
      dify-repack verify-signature plugin-offline.signed.difypkg --key keys/offline.public.pem
      dify-repack verify-signature plugin.difypkg --key /srv/dify/docker/keys/offline.public.pem --json
    """
    info = verify_signature(Path(package), Path(key))
    if output().as_json:
        emit("success", {"package": package, "key": key, "category": info.category, "time": info.time})
        return
    click.echo(f"verified: {package}  (signed {_utc(info.time)}, category {info.category or 'none'}, key {key})")
