"""Free loopback ports for the processes a test starts (a Bytewax cluster's addresses)."""

import socket


def free_ports(n: int) -> list[int]:
    # Held open together so that the n ports differ; closed before the processes bind them.
    sockets = [socket.socket() for _ in range(n)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports
