"""``python -m provider.archive``: build, inspect and unpack provider archives. I/O.

Commands::

    build [--out FILE] [--binary TARGET=PATH ...]   freeze, sign and write the archive (``make par``)
    inspect FILE [--target TARGET]                  print the claims; check hashes, keys and signature
    extract FILE DIR [--target TARGET]              write TARGET's binary to DIR, checked as a host does

``inspect`` reads an archive (``.par``, ``.par.gz``) or a bare ``claims.jwt``; its exit code
is 0 when everything checks, 1 when a check fails (every failure is printed), 2 for a file
that is not an archive at all. ``build`` and ``extract`` exit 1 on failure, with the reason.
"""

from __future__ import annotations

import argparse
import datetime
import os
import sys
import time
from pathlib import Path

from provider.archive import jwt, par, stub
from provider.archive.build import OUT
from provider.archive.build import build as build_archive
from provider.errors import ArchiveError

ROOT = Path(__file__).resolve().parents[2]


def _arguments(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m provider.archive", description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    build = commands.add_parser("build", help="freeze the provider, sign and write the archive")
    build.add_argument("--out", type=Path, default=ROOT / OUT, help=f"default: {OUT}")
    build.add_argument("--cache-dir", type=Path, default=ROOT / ".cache", help="default: .cache")
    build.add_argument(
        "--binary",
        action="append",
        default=[],
        metavar="TARGET=PATH",
        help="add a binary frozen on another machine, e.g. aarch64-linux=./aarch64-linux.bin",
    )
    inspect = commands.add_parser("inspect", help="print the claims and check hashes, keys and signature")
    inspect.add_argument("file", type=Path)
    inspect.add_argument("--target", help="also require this target's binary (e.g. x86_64-linux)")
    extract = commands.add_parser("extract", help="write a target's binary to a directory, checked as a host")
    extract.add_argument("file", type=Path)
    extract.add_argument("directory", type=Path)
    extract.add_argument("--target", help="default: this machine's (e.g. x86_64-linux)")
    return parser.parse_args(argv)


def _when(seconds: int) -> str:
    return datetime.datetime.fromtimestamp(seconds, datetime.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _size(count: int) -> str:
    return f"{count / 1e6:.1f} MB ({count:,} bytes)"


def _claims_lines(claims: jwt.ProviderClaims) -> list[str]:
    rows = [
        ("name", claims.name or "(none)"),
        ("vendor", claims.vendor),
        ("version", claims.version or "(none)"),
        ("revision", "(none)" if claims.revision is None else str(claims.revision)),
        ("issuer", f"{claims.issuer} (account)"),
        ("subject", f"{claims.subject} (service)"),
        ("issued", f"{_when(claims.issued_at)} (iat {claims.issued_at})"),
        ("expires", "never" if claims.expires is None else _when(claims.expires)),
        ("jti", claims.jti),
        ("wascap", f"revision {claims.wascap_revision}" if claims.wascap_revision else "(no revision)"),
    ]
    return [f"  {key:<10} {value}" for key, value in rows]


def inspect(path: Path, target: str | None) -> int:
    """Print what ``path`` holds and whether it verifies; the exit code."""
    data = path.read_bytes()
    now = int(time.time())
    if data.lstrip().startswith(b"eyJ"):  # a bare claims.jwt: base64url of '{"'
        token = data.decode("ascii", errors="replace").strip()
        claims = jwt.decode(token)
        print(f"{path}: claims (JWT, {len(token)} characters)")
        print("\n".join(_claims_lines(claims)))
        for name, digest in sorted(claims.target_hashes.items()):
            print(f"  {'hash':<10} {name} {digest}")
        found = jwt.problems(token, now)
    else:
        archive = par.read(data)
        print(f"{path}: provider archive ({'gzip' if archive.compressed else 'tar'}, {_size(len(data))})")
        print("\n".join(_claims_lines(archive.claims)))
        for name in archive.targets:
            binary = archive.binaries[name]
            ok = archive.claims.target_hashes.get(name) == par.sha256_hex(binary)
            print(f"  {'target':<10} {name}.bin {_size(len(binary))} sha256 {par.sha256_hex(binary)}")
            print(f"  {'':<10} {'hash matches the claims' if ok else 'HASH DOES NOT MATCH THE CLAIMS'}")
            info = stub.parse(binary)
            if info is not None:
                print(f"  {'':<10} frozen {info.name} {info.version}, needs glibc >= {info.glibc}")
        if archive.world is not None:
            print(f"  {'world':<10} {par.WORLD} {_size(len(archive.world))}")
        found = par.problems(archive, now=now, target=target)
    if found:
        for problem in found:
            print(f"  FAILED     {problem}")
        return 1
    print("  verified   hashes, key types, the issuer's Ed25519 signature, validity window")
    return 0


def extract(path: Path, directory: Path, target: str | None) -> Path:
    """Write the binary a host would run to ``directory`` (mode 0755); its path."""
    chosen = target or par.native_target()
    binary = par.load_target(path.read_bytes(), chosen)
    directory.mkdir(parents=True, exist_ok=True)
    out = directory / f"{chosen}.bin"
    staged = directory / f".{out.name}.{os.getpid()}"
    staged.write_bytes(binary)
    staged.chmod(0o755)
    staged.replace(out)
    return out


def build(args: argparse.Namespace) -> None:
    """``make par``: freeze, sign, write, verify, and say what was made."""
    extra = {}
    for given in args.binary:
        target, _, path = given.partition("=")
        if not path:
            raise ArchiveError(f"--binary {given!r}: expected TARGET=PATH")
        extra[target] = Path(path)
    built = build_archive(ROOT, args.out, args.cache_dir, os.environ, extra_binaries=extra)
    frozen = built.frozen
    how = "from the cache" if frozen.cached else f"frozen in {frozen.seconds:.1f} s"
    print(f"{built.path}: {_size(built.size)}")
    print(f"  {frozen.target}.bin {how}, needs glibc >= {frozen.glibc}")
    print(f"  {built.claims.name} {built.claims.version} by {built.claims.vendor}")
    print(f"  issuer {built.keys.issuer.public}, subject {built.keys.subject} ({built.keys.origin})")


def main(argv: list[str] | None = None) -> None:
    """The command line."""
    args = _arguments(argv)
    try:
        if args.command == "build":
            build(args)
        elif args.command == "inspect":
            sys.exit(inspect(args.file, args.target))
        else:
            print(extract(args.file, args.directory, args.target))
    except (OSError, ArchiveError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2 if args.command == "inspect" else 1)


if __name__ == "__main__":
    main()
