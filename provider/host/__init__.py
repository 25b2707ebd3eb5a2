"""The local wasmCloud-like host: what runs the provider and wasm components on one machine. I/O.

``nats_server`` (embedded nats-server), ``launcher`` (the provider process, started as a host
starts it), ``control`` (the host's side of the control protocol), ``lattice`` (both together),
``native`` (Python components over wRPC), ``wasm`` (wasmtime components over wRPC), ``build``
(componentize-py builds, image references), ``wadm`` (the manifest, pure), ``local`` (a whole
manifest running) and ``__main__`` (``python -m provider.host run|check|build``).
"""
