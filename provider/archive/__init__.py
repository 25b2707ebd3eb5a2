"""Provider archives (PAR): what a wasmCloud 1.x lattice runs (protocol spec §11, design §8).

Pure modules: :mod:`~provider.archive.jwt` (wascap claims, signed and verified),
:mod:`~provider.archive.par` (the tar(.gz) layout, built and read, checked as a host and
``wash inspect`` check it), :mod:`~provider.archive.stub` (the self-extracting ``/bin/sh``
executable around the frozen provider). I/O: :mod:`~provider.archive.freeze` (PyInstaller,
cached by a hash of its inputs), :mod:`~provider.archive.build` (keys, metadata, ``make
par``), :mod:`~provider.archive.certs` (CA certificates for the frozen provider), and
``python -m provider.archive``.

The package stands beside the provider's layers: it imports none of them, and only the
local host (``provider.host``) imports it.
"""
