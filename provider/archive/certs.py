"""CA certificates for the frozen provider, on a host laid out unlike the build machine. I/O.

The frozen provider carries the build machine's OpenSSL, which looks for CA certificates
where *that* machine keeps them (its compiled-in ``OPENSSLDIR``: ``/usr/lib/ssl`` for a
Debian build). On Fedora, RHEL or openSUSE nothing is there, and every ``wss://`` link
and ``tls://`` NATS connection would fail verification. So before the provider starts,
the frozen entry point (``packaging/entry.py``) calls :func:`configure`, which picks, in
this order:

1. ``SSL_CERT_FILE`` / ``SSL_CERT_DIR`` if the environment sets them (a host passes no
   environment, but a wrapper may);
2. OpenSSL's own default file, when it exists on this host;
3. the first system bundle of :data:`SYSTEM_BUNDLES` that exists (Debian/Ubuntu/Alpine,
   Fedora/RHEL, openSUSE, …): the host's own trust store, with the operator's CAs;
4. OpenSSL's default directory, when it holds certificates;
5. the Mozilla bundle of ``certifi``, shipped inside the archive, for hosts with no CA
   store at all.

and points ``SSL_CERT_FILE`` at it, which OpenSSL reads whenever a default context is
made (websockets' ``wss://``, nats-py's TLS). A link's ``TLS_CA`` still replaces all this.
"""

from __future__ import annotations

import os
import ssl
from collections.abc import Callable, MutableMapping
from dataclasses import dataclass

SYSTEM_BUNDLES = (
    "/etc/ssl/certs/ca-certificates.crt",  # Debian, Ubuntu, Arch, Gentoo, Alpine
    "/etc/pki/tls/certs/ca-bundle.crt",  # Fedora, RHEL, CentOS, Amazon Linux
    "/etc/pki/ca-trust/extracted/pem/tls-ca-bundle.pem",  # RHEL 7 and later
    "/etc/ssl/ca-bundle.pem",  # openSUSE, SLES
    "/etc/pki/tls/cacert.pem",  # OpenELEC
    "/etc/ssl/cert.pem",  # Alpine, the BSDs
)


@dataclass(frozen=True)
class CaChoice:
    """Where the provider's default TLS contexts find CA certificates, and why."""

    path: str | None
    source: str
    point_openssl_at_it: bool = False
    """OpenSSL would not find ``path`` by itself: :func:`configure` sets ``SSL_CERT_FILE``."""

    def __str__(self) -> str:
        return f"{self.path} ({self.source})" if self.path else self.source


def choose(
    environ: MutableMapping[str, str],
    default_file: str,
    default_dir: str,
    *,
    bundles: tuple[str, ...] | None = None,
    is_file: Callable[[str], bool] = os.path.isfile,
    has_certificates: Callable[[str], bool] = lambda d: os.path.isdir(d) and bool(os.listdir(d)),
    bundled: Callable[[], str | None] = lambda: None,
) -> CaChoice:
    """The CA source to use (see the module docstring for the order; ``bundles`` defaults to
    :data:`SYSTEM_BUNDLES`). Changes nothing."""
    for variable in ("SSL_CERT_FILE", "SSL_CERT_DIR"):
        if environ.get(variable):
            return CaChoice(environ[variable], f"{variable} from the environment")
    if default_file and is_file(default_file):
        return CaChoice(default_file, "OpenSSL's default")
    for bundle in SYSTEM_BUNDLES if bundles is None else bundles:
        if is_file(bundle):
            return CaChoice(bundle, "this host's CA bundle", point_openssl_at_it=True)
    if default_dir and has_certificates(default_dir):
        return CaChoice(default_dir, "OpenSSL's default directory")
    shipped = bundled()
    if shipped:
        return CaChoice(shipped, "certifi's bundle, shipped in the archive", point_openssl_at_it=True)
    return CaChoice(None, "no CA certificates found: wss:// and TLS need a link's TLS_CA")


def _certifi() -> str | None:
    try:
        import certifi
    except ImportError:
        return None
    path: str = certifi.where()
    return path if os.path.isfile(path) else None


def configure(environ: MutableMapping[str, str] | None = None) -> CaChoice:
    """Choose a CA source for this process and, if OpenSSL would not find it by itself,
    point ``SSL_CERT_FILE`` at it (in ``environ``, default ``os.environ``)."""
    env = os.environ if environ is None else environ
    paths = ssl.get_default_verify_paths()
    choice = choose(env, paths.openssl_cafile, paths.openssl_capath, bundled=_certifi)
    if choice.path and choice.point_openssl_at_it:
        env["SSL_CERT_FILE"] = choice.path
    return choice
