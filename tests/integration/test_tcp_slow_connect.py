"""The TCP proxy holds back a client that sends while the upstream connection is still being made, and
goes on holding it back once connected if what came early already fills the upstream's buffer.

The upstream's accept queue is full at first, so the proxy's SYN is dropped and retried (about a second
later); meanwhile the client pushes as fast as it can. Then the upstream accepts but reads nothing for
a while: at no point may the proxy take in more than its buffers allow. Finally the upstream reads
everything, and every byte arrives."""

from __future__ import annotations

import contextlib
import socket
import threading
import time

from kit import Proxy, free_port

MiB = 1024 * 1024
TOTAL = 256 * MiB
# Kernel buffers on loopback can hold tens of MiB in flight (tcp_rmem up to 32 MiB per socket, on
# both sockets of each leg); the proxy itself must hold little more than its 64 KiB high-water mark.
MAX_IN_FLIGHT = 96 * MiB
MAX_RSS_GROWTH_KB = 48 * 1024


class SlowUpstream:
    """A listener whose queue is full (SYNs dropped) until `open()`, then an upstream that reads
    nothing until `drain()`, and then counts every byte to EOF."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(0)
        self.port = int(self.sock.getsockname()[1])
        self.fillers: list[socket.socket] = []
        for _ in range(3):
            f = socket.socket()
            f.setblocking(False)
            f.connect_ex(("127.0.0.1", self.port))
            self.fillers.append(f)
        self.received = 0
        self.go = threading.Event()
        self.done = threading.Event()

    def open(self) -> None:
        """Empty the accept queue: the proxy's next SYN gets through; take its connection."""
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            conn, _ = self.sock.accept()
            if conn.getpeername()[1] in {f.getsockname()[1] for f in self.fillers}:
                conn.close()
                continue
            with conn:
                self.go.wait(30)
                while data := conn.recv(MiB):
                    self.received += len(data)
                self.done.set()
            return

    def close(self) -> None:
        for s in [*self.fillers, self.sock]:
            s.close()


def test_bytes_sent_while_connecting_are_held_back(loop_name: str) -> None:
    up = SlowUpstream()
    admin, port = free_port(), free_port()
    p = Proxy(f"""
admin: 127.0.0.1:{admin}
drain_time: 0s
listeners:
  - name: tcp
    address: 127.0.0.1:{port}
    protocol: tcp
    cluster: slow
clusters:
  - name: slow
    endpoints: [127.0.0.1:{up.port}]
    connect_timeout: 10s
""", admin, loop=loop_name).start()
    sent = [0]

    def push(s: socket.socket) -> None:
        chunk = b"x" * MiB
        with contextlib.suppress(OSError):
            for _ in range(TOTAL // MiB):
                s.sendall(chunk)
                sent[0] += MiB
            s.shutdown(socket.SHUT_WR)

    try:
        base_kb = p.rss_kb()
        with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
            pusher = threading.Thread(target=push, args=(s,), daemon=True)
            pusher.start()
            time.sleep(0.5)  # the proxy is still connecting: its SYN sits in a full queue
            assert sent[0] < MAX_IN_FLIGHT, f"{sent[0] / MiB:.0f} MiB taken in while connecting"
            up.open()
            time.sleep(2.0)  # connected (the SYN is retried after ~1 s), the upstream reads nothing
            assert sent[0] < MAX_IN_FLIGHT, f"{sent[0] / MiB:.0f} MiB taken in for an upstream not reading"
            assert p.rss_kb() - base_kb < MAX_RSS_GROWTH_KB, f"the proxy grew by {p.rss_kb() - base_kb} KiB"
            up.go.set()
            assert up.done.wait(60), f"the upstream got {up.received} of {TOTAL} bytes"
            pusher.join(10)
        assert up.received == TOTAL
        assert p.hwm_kb() - base_kb < MAX_RSS_GROWTH_KB
    finally:
        assert p.stop() == 0, p.logs()
        up.close()
