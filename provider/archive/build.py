"""``make par``: the signed provider archive, built from this checkout. I/O.

* **What goes in**: the frozen provider for this machine's target (:mod:`~provider.archive.freeze`,
  cached), plus any binaries frozen elsewhere (``--binary aarch64-linux=PATH``).
* **Claims**: ``name`` and ``ver`` from ``pyproject.toml``'s ``[project]``, ``vendor`` (and
  an optional ``rev``) from its ``[tool.provider-archive]``; ``iat`` is now, or
  ``SOURCE_DATE_EPOCH`` when set (then the archive is the same byte for byte).
* **Keys**, as wash takes them: ``WASH_ISSUER_KEY`` (an account seed ``SA…``, or a file
  holding one) signs; ``WASH_SUBJECT_KEY`` (a service seed ``SV…``, its public key ``V…``,
  or a file holding either) is the subject. Whichever is not set comes from ``.keys/``
  (``issuer.nk``, ``subject.nk``; git-ignored), generated there once, mode 0600. Seeds are
  never printed: only public keys are.
* **Check**: the archive is read back and verified as ``inspect`` does before it replaces
  the old one.
"""

from __future__ import annotations

import os
import time
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from provider import nkeys
from provider.archive import jwt, par
from provider.archive.freeze import Frozen, freeze
from provider.errors import ArchiveError, InvalidKey

ISSUER_ENV = "WASH_ISSUER_KEY"
SUBJECT_ENV = "WASH_SUBJECT_KEY"
KEYS_DIR = Path(".keys")
OUT = Path("build") / "wasmcloud-ws-provider.par.gz"


@dataclass(frozen=True)
class Metadata:
    """The archive's claims from ``pyproject.toml``."""

    name: str
    vendor: str
    version: str
    revision: int | None = None


def metadata(root: Path) -> Metadata:
    """Name and version from ``[project]``, vendor and revision from ``[tool.provider-archive]``."""
    try:
        project = tomllib.loads((root / "pyproject.toml").read_text())
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ArchiveError(f"cannot read {root / 'pyproject.toml'}: {exc}") from exc
    table = project.get("tool", {}).get("provider-archive", {})
    name, version = project["project"]["name"], project["project"]["version"]
    vendor, revision = table.get("vendor"), table.get("revision")
    if not isinstance(vendor, str) or not vendor:
        raise ArchiveError("pyproject.toml: [tool.provider-archive] vendor is not set")
    if revision is not None and (not isinstance(revision, int) or not 0 <= revision < 2**31):
        raise ArchiveError("pyproject.toml: [tool.provider-archive] revision must be a whole number")
    return Metadata(name, vendor, version, revision)


@dataclass(frozen=True, repr=False)
class Keys:
    """The issuer (signs) and the subject's public key, and where each came from."""

    issuer: nkeys.KeyPair
    subject: str
    origin: str

    def __repr__(self) -> str:
        return f"Keys(issuer={self.issuer.public!r}, subject={self.subject!r})"


def _value(given: str, variable: str) -> str:
    """A key's text from an environment variable: a file holding it, else the text itself."""
    path = Path(given.strip()).expanduser()
    try:
        return path.read_text().strip() if path.is_file() else given.strip()
    except OSError as exc:
        raise ArchiveError(f"{variable}: cannot read {path}: {exc.strerror}") from None


def _stored(path: Path, prefix: int) -> str:
    """The seed in ``path``, made now (mode 0600, never printed) if there is none yet."""
    if path.exists():
        return path.read_text().strip()
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    seed = nkeys.KeyPair.generate(prefix).seed
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as file:
        file.write(seed + "\n")
    return seed


def keys(root: Path, environ: Mapping[str, str]) -> Keys:
    """The signing keys: from the environment as wash reads them, else from ``.keys/``."""
    origins = []
    try:
        if environ.get(ISSUER_ENV):
            issuer_text, origin = _value(environ[ISSUER_ENV], ISSUER_ENV), ISSUER_ENV
        else:
            issuer_text, origin = _stored(root / KEYS_DIR / "issuer.nk", nkeys.ACCOUNT), str(KEYS_DIR)
        origins.append(f"issuer from {origin}")
        issuer = nkeys.KeyPair.from_seed(issuer_text, nkeys.ACCOUNT, f"the issuer ({origin})")
        if environ.get(SUBJECT_ENV):
            subject_text, origin = _value(environ[SUBJECT_ENV], SUBJECT_ENV), SUBJECT_ENV
        else:
            subject_text, origin = _stored(root / KEYS_DIR / "subject.nk", nkeys.SERVICE), str(KEYS_DIR)
        origins.append(f"subject from {origin}")
        if subject_text.startswith("S"):
            subject = nkeys.KeyPair.from_seed(subject_text, nkeys.SERVICE, f"the subject ({origin})").public
        else:
            nkeys.decode_public(subject_text, nkeys.SERVICE, f"the subject ({origin})")
            subject = subject_text
    except InvalidKey as exc:
        raise ArchiveError(str(exc)) from None
    return Keys(issuer, subject, ", ".join(origins))


def issued_at(environ: Mapping[str, str]) -> int:
    """``SOURCE_DATE_EPOCH`` if set (reproducible builds), else now."""
    given = environ.get("SOURCE_DATE_EPOCH")
    if given:
        try:
            return int(given)
        except ValueError:
            raise ArchiveError(f"SOURCE_DATE_EPOCH={given!r} is not a whole number of seconds") from None
    return int(time.time())


@dataclass(frozen=True)
class Built:
    """A written archive."""

    path: Path
    size: int
    frozen: Frozen
    claims: jwt.ProviderClaims
    keys: Keys


def build(
    root: Path,
    out: Path,
    cache_dir: Path,
    environ: Mapping[str, str],
    *,
    extra_binaries: Mapping[str, Path] | None = None,
    signing: Keys | None = None,
    compress: bool = True,
) -> Built:
    """Freeze (or take from the cache), sign, write ``out`` and verify it. ``signing`` replaces
    the keys from the environment or ``.keys/`` (the tests sign with throw-away keys)."""
    meta = metadata(root)
    chosen = signing or keys(root, environ)
    frozen = freeze(root, cache_dir)
    binaries = {frozen.target: frozen.path.read_bytes()}
    for target, path in (extra_binaries or {}).items():
        if target in binaries:
            raise ArchiveError(f"--binary {target}: this machine's own build is that target")
        try:
            binaries[target] = path.read_bytes()
        except OSError as exc:
            raise ArchiveError(f"--binary {target}={path}: {exc.strerror}") from None
    now = issued_at(environ)
    data = par.build(
        name=meta.name,
        vendor=meta.vendor,
        version=meta.version,
        revision=meta.revision,
        binaries=binaries,
        issuer=chosen.issuer,
        subject=chosen.subject,
        issued_at=now,
        compress=compress,
    )
    archive = par.verify(data, now=now, target=frozen.target)
    out.parent.mkdir(parents=True, exist_ok=True)
    staged = out.with_name(f".{out.name}.{os.getpid()}")
    staged.write_bytes(data)
    staged.replace(out)
    return Built(out, len(data), frozen, archive.claims, chosen)
