"""Provider archives: the tar(.gz) a lattice pulls, built, read and checked (protocol spec §11). Pure.

A PAR is a tar (GNU headers; gzip optional, recognised by its magic ``1f 8b``) of
``claims.jwt``, optionally ``world.wasm``, and one ``<arch>-<os>.bin`` per target.
Entries are known by their file stem, as the host knows them: ``claims``, ``world``,
otherwise the target. What a 1.9 host checks when it loads one (:func:`load_target`):
the claims decode, its own target's binary is there, and its SHA-256 (upper-case hex)
equals the claims' ``target_hashes`` entry. :func:`problems` adds what ``wash inspect``
and policy services check: every binary and hash accounted for, the key types, the
signature, the validity window.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import platform
import re
import sys
import tarfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import PurePosixPath

from provider import nkeys
from provider.archive import jwt
from provider.errors import ArchiveError

GZIP_MAGIC = b"\x1f\x8b"
CLAIMS = "claims.jwt"
WORLD = "world.wasm"
"""The optional WIT package; its hash is in ``target_hashes`` under this same name."""
MAX_BYTES = 1 << 30
"""The most an archive may unpack to: a gzip bomb is refused, not read into memory."""
_TARGET = re.compile(r"^[a-z0-9_]+-[a-z0-9_]+$")


def native_target() -> str:
    """This machine's target as a host names it (Rust's ``ARCH-OS``): ``x86_64-linux``."""
    if sys.platform != "linux":
        raise ArchiveError(f"the provider is frozen and run on Linux only, not {sys.platform}")
    return f"{platform.machine()}-linux"


def sha256_hex(data: bytes) -> str:
    """SHA-256 as wascap writes it in ``target_hashes``: upper-case hex."""
    return hashlib.sha256(data).hexdigest().upper()


@dataclass(frozen=True)
class ProviderArchive:
    """An archive's entries, read but not yet checked."""

    token: str
    claims: jwt.ProviderClaims
    binaries: Mapping[str, bytes]
    world: bytes | None = None
    compressed: bool = False

    @property
    def targets(self) -> list[str]:
        """The targets that have a binary, sorted."""
        return sorted(self.binaries)


def _check_target(target: str) -> None:
    if not _TARGET.match(target) or target in ("claims", "world"):
        raise ArchiveError(f"{target!r} is not a target name like x86_64-linux (<arch>-<os>)")


def build(
    *,
    name: str,
    vendor: str,
    binaries: Mapping[str, bytes],
    issuer: nkeys.KeyPair,
    subject: str,
    issued_at: int,
    version: str | None = None,
    revision: int | None = None,
    world: bytes | None = None,
    compress: bool = True,
) -> bytes:
    """The bytes of a signed archive, as ``wash par create`` lays it out.

    Reproducible: entries in a fixed order (claims, world, targets sorted), no times, owners
    or gzip name, so the same inputs and ``issued_at`` give the same bytes.
    """
    if not binaries:
        raise ArchiveError("an archive needs at least one target binary")
    for target in binaries:
        _check_target(target)
    nkeys.decode_public(subject, nkeys.SERVICE, "the subject")
    hashes = {target: sha256_hex(data) for target, data in binaries.items()}
    if world is not None:
        hashes[WORLD] = sha256_hex(world)
    claims = jwt.new_claims(
        name=name,
        vendor=vendor,
        issuer=issuer.public,
        subject=subject,
        target_hashes=hashes,
        issued_at=issued_at,
        version=version,
        revision=revision,
    )
    entries = [(CLAIMS, jwt.encode(claims, issuer).encode(), 0o644)]
    if world is not None:
        entries.append((WORLD, world, 0o644))
    entries += [(f"{target}.bin", binaries[target], 0o755) for target in sorted(binaries)]
    return pack(entries, compress=compress)


def pack(entries: list[tuple[str, bytes, int]], *, compress: bool) -> bytes:
    """A GNU tar of ``(name, data, mode)`` entries in that order, owned by nobody, time 0;
    gzip-compressed (no name, time 0) when ``compress``."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.GNU_FORMAT) as tar:
        for name, data, mode in entries:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mode = mode
            info.mtime = 0
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            tar.addfile(info, io.BytesIO(data))
    raw = buffer.getvalue()
    return gzip.compress(raw, compresslevel=9, mtime=0) if compress else raw


def read(data: bytes) -> ProviderArchive:
    """Every entry of an archive, its claims decoded (not verified). Raises :class:`ArchiveError`
    for what no host could load: not a tar, a claims.jwt that does not decode, no claims.jwt."""
    if len(data) < 2:
        raise ArchiveError("not enough bytes to be a provider archive")
    compressed = data[:2] == GZIP_MAGIC
    token: str | None = None
    world: bytes | None = None
    binaries: dict[str, bytes] = {}
    total = 0
    try:
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz" if compressed else "r:") as tar:
            for member in tar:
                stem = PurePosixPath(member.name).stem
                if not member.isfile():
                    raise ArchiveError(f"entry {member.name!r} is not a regular file")
                total += member.size
                if total > MAX_BYTES:
                    raise ArchiveError(f"the archive unpacks to more than {MAX_BYTES >> 20} MiB")
                extracted = tar.extractfile(member)
                assert extracted is not None  # a regular file always has contents
                content = extracted.read()
                if stem == "claims":
                    if token is not None:
                        raise ArchiveError(f"a second claims entry, {member.name!r}")
                    try:
                        token = content.decode("ascii").strip()
                    except UnicodeDecodeError as exc:
                        raise ArchiveError("claims.jwt is not a JWT (not ASCII)") from exc
                elif stem == "world":
                    if world is not None:
                        raise ArchiveError(f"a second world entry, {member.name!r}")
                    world = content
                else:
                    if stem in binaries:
                        raise ArchiveError(f"a second entry for target {stem!r}, {member.name!r}")
                    binaries[stem] = content
    except (tarfile.TarError, EOFError, OSError, gzip.BadGzipFile, ValueError) as exc:
        raise ArchiveError(f"not a provider archive (a tar, gzip optional): {exc}") from exc
    if token is None:
        raise ArchiveError("the archive has no claims.jwt")
    return ProviderArchive(token, jwt.decode(token), binaries, world, compressed)


def _hash_problem(claims: jwt.ProviderClaims, key: str, data: bytes) -> str | None:
    expected = claims.target_hashes.get(key)
    actual = sha256_hex(data)
    if expected is None:
        return f"{key}: no hash in the claims' target_hashes (a 1.9 host panics on this)"
    if expected == actual:
        return None
    if expected.upper() == actual:
        return f"{key}: its hash in the claims is not upper-case hex (hosts compare the text exactly)"
    return f"{key}: SHA-256 {actual} differs from the claims' {expected} (the binary was altered)"


def _missing(archive: ProviderArchive, target: str) -> list[str]:
    if target in archive.binaries:
        return []
    return [f"no {target}.bin in the archive (targets: {', '.join(archive.targets) or 'none'})"]


def _hashes(archive: ProviderArchive, targets: list[str]) -> list[str]:
    """Hash problems of these targets' binaries and of ``world.wasm`` (if present)."""
    checked = [(t, archive.binaries[t]) for t in targets if t in archive.binaries]
    if archive.world is not None:
        checked.append((WORLD, archive.world))
    return [p for key, data in checked if (p := _hash_problem(archive.claims, key, data))]


def host_problems(archive: ProviderArchive, target: str) -> list[str]:
    """What a 1.9 host refuses when it loads ``archive`` for ``target`` (its own ``<arch>-<os>``)."""
    return _missing(archive, target) or _hashes(archive, [target])


def problems(archive: ProviderArchive, *, now: int, target: str | None = None) -> list[str]:
    """Everything a host (for ``target``, if given), ``wash inspect`` or a policy service
    would find wrong; empty when the archive verifies."""
    found: list[str] = []
    if not archive.binaries:
        found.append("the archive has no target binary (<arch>-<os>.bin)")
    if target is not None:
        found += _missing(archive, target)
    found += _hashes(archive, archive.targets)
    for key in sorted(archive.claims.target_hashes):
        if key == WORLD and archive.world is None:
            found.append(f"the claims hash {WORLD}, which is not in the archive")
        elif key != WORLD and key not in archive.binaries:
            found.append(f"the claims hash target {key}, whose {key}.bin is not in the archive")
    return found + jwt.problems(archive.token, now)


def verify(data: bytes, *, now: int, target: str | None = None) -> ProviderArchive:
    """Read and check an archive; raises :class:`ArchiveError` listing every problem."""
    archive = read(data)
    found = problems(archive, now=now, target=target)
    if found:
        raise ArchiveError("; ".join(found))
    return archive


def load_target(data: bytes, target: str) -> bytes:
    """The binary a host would run from ``data`` on ``target``, checked as a 1.9 host checks it
    (claims decode, the binary is there, its hash matches; the signature is not looked at).
    Raises :class:`ArchiveError`."""
    archive = read(data)
    found = host_problems(archive, target)
    if found:
        raise ArchiveError("; ".join(found))
    return archive.binaries[target]
