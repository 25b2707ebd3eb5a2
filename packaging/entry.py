"""The frozen provider's entry point: what the archive's executable runs (PyInstaller freezes
this file with ``packaging/wasmcloud-ws-provider.spec``; ``make par`` drives it).

A host runs it with no arguments: CA certificates are located for this host
(:mod:`provider.archive.certs`), then the provider starts exactly as ``python -m provider``.
``--version`` prints what the binary is and where it finds CA certificates, for an operator.
"""

from __future__ import annotations

import importlib.metadata
import platform
import sys

from provider.archive import certs


def main() -> None:
    choice = certs.configure()
    if sys.argv[1:] == ["--version"]:
        version = importlib.metadata.version("wasmcloud-websocket-provider")
        print(f"wasmcloud-ws-provider {version} (frozen, Python {platform.python_version()})")
        print(f"CA certificates: {choice}")
        return
    from provider.__main__ import main as provider_main

    provider_main()


if __name__ == "__main__":
    main()
