"""The archive's executable: a ``/bin/sh`` stub in front of the frozen provider. Pure.

A host runs ``<arch>-<os>.bin`` directly, with no arguments, an empty environment and its
own working directory, and SIGKILLs it on every stop (protocol spec §11.3). A PyInstaller
*one-file* binary runs Python in a child of a bootstrap process, so that SIGKILL would
leave the provider running and its ~50 MB extraction behind, every time. This executable
is instead a short shell script followed by a gzip'd tar of the PyInstaller *one-dir*
bundle. The script

1. unpacks the bundle, once, into ``${TMPDIR:-/tmp}/wasmcloud-ws-provider-<uid>/<sha256>``
   (a directory only this user may write; unpacked beside, then renamed into place, so a
   half-written bundle is never run and two starts at once do not collide);
2. on a fresh unpack, removes what earlier versions left: interrupted unpacks whose
   process is gone, and every other version but the last one used and those still
   running — so the cache holds at most the versions in use plus two;
3. ``exec``\\ s the bundle's executable: the PID the host holds *is* the provider's Python,
   and the SIGKILL ends everything.

It needs ``/bin/sh``, ``tar``, ``gzip``, ``grep`` and coreutils (or busybox), and says so if the
host's glibc is older than the bundle's (``getconf GNU_LIBC_VERSION``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

NAME = "wasmcloud-ws-provider"
"""The bundle's executable, and the cache directory's name."""

_TEMPLATE = r"""#!/bin/sh
# @NAME@ @VERSION@ for @TARGET@, needs glibc >= @GLIBC@.
# A frozen Python provider behind this script: unpacked once into a per-user cache keyed by
# its SHA-256, then exec'd, so the host's PID is the provider's. Needs sh, tar and gzip.
set -u
PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin  # for this script only: not exported
name=@NAME@
key=@KEY@
offset=@OFFSET@
need=@GLIBC@
fail() { echo "$name: $*" >&2; exit 1; }

# A loader error about GLIBC_2.xx is cryptic: say what is missing first.
have=$(getconf GNU_LIBC_VERSION 2>/dev/null) && case $have in
  "glibc "*)
    have=${have#glibc }
    hm=${have%%.*} hn=${have#*.} nm=${need%%.*} nn=${need#*.}
    hn=${hn%%.*}
    if [ "$hm" -lt "$nm" ] 2>/dev/null || { [ "$hm" -eq "$nm" ] && [ "$hn" -lt "$nn" ]; } 2>/dev/null; then
      fail "needs glibc >= $need, this host has $have"
    fi ;;
esac

uid=$(id -u) || fail "cannot tell the user id"
root=${TMPDIR:-/tmp}/$name-$uid
[ -d "$root" ] || mkdir -m 700 "$root" 2>/dev/null || [ -d "$root" ] || fail "cannot create $root"
# Only a directory of this user's that nobody else may write is trusted to hold code.
ours() {
  set -- $(ls -ldn "$1" 2>/dev/null)
  [ "${3:-}" = "$uid" ] && case ${1:-} in d????-??-*) true ;; *) false ;; esac
}
ours "$root" || fail "$root is not a directory of user $uid that only it may write: remove it"
root=$(cd "$root" && pwd -P) || fail "cannot enter $root"
dir=$root/$key
exe=$dir/$name

in_use() {  # is a running process's executable inside directory $1? (one ls, not one fork a process)
  ls -l /proc/[0-9]*/exe 2>/dev/null | grep -F -q -- "-> $1/"
}

unpack() {
  for old in "$root"/.partial-*; do  # unpacks that a SIGKILL interrupted
    [ -e "$old" ] || continue
    kill -0 "${old##*-}" 2>/dev/null || rm -rf "$old"
  done
  part=$root/.partial-$key-$$
  rm -rf "$part" && mkdir "$part" || fail "cannot write to $root"
  if ! tail -c +$((offset + 1)) "$0" | tar -xzf - -C "$part" || [ ! -x "$part/$name" ]; then
    rm -rf "$part"
    fail "cannot unpack into $root (disk full? tar and gzip missing?)"
  fi
  if [ -d "$dir" ]; then rm -rf "$part"; else mv "$part" "$dir" || fail "cannot rename into $dir"; fi
  # Another start may have renamed its copy into place first: then mv moved ours inside it.
  rm -rf "$dir/.partial-$key-$$"
  last=
  for entry in $(ls -1t "$root"); do  # newest first; the names are hex digests
    [ "$entry" = "$key" ] && continue
    if [ -z "$last" ]; then last=$entry; continue; fi
    in_use "$root/$entry" || rm -rf "$root/$entry"
  done
}

[ -x "$exe" ] || unpack
touch "$dir" 2>/dev/null  # the last-used time that decides what a later version keeps
exec "$exe" "$@"
"""


@dataclass(frozen=True)
class StubInfo:
    """What a stub's header says about the bundle behind it."""

    name: str
    version: str
    target: str
    glibc: str
    key: str
    offset: int


def wrap(payload: bytes, key: str, *, version: str, target: str, glibc: str) -> bytes:
    """The executable: the stub, then ``payload`` (a gzip'd tar of the one-dir bundle, whose
    SHA-256 is ``key``) starting at the byte offset the stub names."""
    if not re.fullmatch(r"[0-9a-f]{64}", key):
        raise ValueError("the key is the payload's SHA-256, in lower-case hex")
    if not re.fullmatch(r"[0-9]+\.[0-9]+", glibc):
        raise ValueError(f"glibc version {glibc!r} is not MAJOR.MINOR")
    for value in (version, target):
        if not re.fullmatch(r"[A-Za-z0-9._+-]+", value):
            raise ValueError(f"{value!r} cannot go into the stub's header")
    text = (
        _TEMPLATE.replace("@NAME@", NAME)
        .replace("@VERSION@", version)
        .replace("@TARGET@", target)
        .replace("@GLIBC@", glibc)
        .replace("@KEY@", key)
    )
    offset = 0
    while True:  # the offset is the stub's own length, which depends on its digits
        script = text.replace("@OFFSET@", str(offset)).encode()
        if len(script) == offset:
            return script + payload
        offset = len(script)


_HEADER = re.compile(
    rb"^#!/bin/sh\n# (?P<name>\S+) (?P<version>\S+) for (?P<target>\S+), "
    rb"needs glibc >= (?P<glibc>[0-9.]+)\.\n"
)


def parse(executable: bytes) -> StubInfo | None:
    """The header of a stub made by :func:`wrap`, or ``None`` for any other executable."""
    head = executable[:4096]
    match = _HEADER.match(head)
    key = re.search(rb"\nkey=([0-9a-f]{64})\n", head)
    offset = re.search(rb"\noffset=([0-9]+)\n", head)
    if not (match and key and offset):
        return None
    return StubInfo(
        match["name"].decode(),
        match["version"].decode(),
        match["target"].decode(),
        match["glibc"].decode(),
        key[1].decode(),
        int(offset[1]),
    )


def payload(executable: bytes, info: StubInfo) -> bytes:
    """The bundle archive behind a stub."""
    return executable[info.offset :]
