"""The wasmCloud 2.x bridge: the server-mode WebSocket server, its sessions mapped to plain NATS subjects.

``subjects`` and ``config`` are pure; ``bridge`` is the I/O part (NATS and the server).
"""
