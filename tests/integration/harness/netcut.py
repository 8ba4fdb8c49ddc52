"""A TCP relay between ferry and a server that a test can cut, for network
partitions: when cut, bytes stop flowing both ways and new connections are
accepted but never answered (a blackhole, like a dead route — not a refusal),
until restore(). Runs in a daemon thread on 127.0.0.1; bounded buffers.

cut() stops the relay only: the kernel still acknowledges what ferry sends
and answers its keepalive probes. blackhole() also drops every packet that
arrives from ferry on the relay's sockets before TCP sees it (a socket filter
that accepts nothing: no acknowledgement, no keepalive answer), as a
partitioned host would, so ferry's own TCP timeouts are what notice it."""

import ctypes
import selectors
import socket
import struct
import threading

SO_ATTACH_FILTER = 26       # <asm-generic/socket.h>
SO_DETACH_FILTER = 27
_DROP_ALL = (ctypes.c_uint64 * 1)(0x06)     # one classic BPF insn: ret #0 (code 0x06, k 0)


def _drop_all(sock):
    """Attach a filter that drops every packet arriving on sock."""
    prog = struct.pack("HL", 1, ctypes.addressof(_DROP_ALL))    # struct sock_fprog
    sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_FILTER, prog)

from .ports import HOST


class NetCut:
    def __init__(self, target_host, target_port):
        self.target = (target_host, target_port)
        self.listener = socket.socket()
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listener.bind((HOST, 0))
        self.listener.listen(128)
        self.listener.setblocking(False)
        self.host, self.port = HOST, self.listener.getsockname()[1]
        self._cut = threading.Event()
        self._stop = threading.Event()
        self._pairs = {}          # socket -> peer socket
        self._parked = []         # accepted while cut: never answered
        self._accepted = set()    # the relay's sockets that face ferry
        self._blackholed = False
        self._thread = threading.Thread(target=self._run, name="netcut", daemon=True)
        self._thread.start()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def cut(self):
        self._cut.set()

    def blackhole(self):
        """Cut, and drop every packet from ferry on the open connections
        (those opened afterwards are parked unanswered, as with cut())."""
        self._cut.set()
        self._blackholed = True
        for s in list(self._accepted):
            try:
                _drop_all(s)
            except OSError:
                pass

    def restore(self):
        if self._blackholed:
            self._blackholed = False
            for s in list(self._accepted):
                try:
                    s.setsockopt(socket.SOL_SOCKET, SO_DETACH_FILTER, 0)
                except OSError:
                    pass
        self._cut.clear()

    def close(self):
        self._stop.set()
        self._thread.join(5)
        for s in list(self._pairs) + self._parked + [self.listener]:
            try:
                s.close()
            except OSError:
                pass

    def _accept(self, sel):
        try:
            client, _ = self.listener.accept()
        except BlockingIOError:
            return
        if self._cut.is_set():
            self._parked.append(client)
            return
        try:
            upstream = socket.create_connection(self.target, timeout=2)
        except OSError:
            client.close()
            return
        self._accepted.add(client)
        for a, b in ((client, upstream), (upstream, client)):
            a.setblocking(False)
            self._pairs[a] = b
            sel.register(a, selectors.EVENT_READ)

    def _drop(self, sel, s):
        for x in (s, self._pairs.get(s)):
            if x is not None and x in self._pairs:
                sel.unregister(x)
                del self._pairs[x]
                self._accepted.discard(x)
                x.close()

    def _run(self):
        sel = selectors.DefaultSelector()
        sel.register(self.listener, selectors.EVENT_READ)
        while not self._stop.is_set():
            for key, _ in sel.select(timeout=0.05):
                s = key.fileobj
                if s is self.listener:
                    self._accept(sel)
                    continue
                if self._cut.is_set() or s not in self._pairs:
                    continue        # cut: leave the bytes where they are
                try:
                    data = s.recv(65536)
                except OSError:
                    data = b""
                if not data:
                    self._drop(sel, s)
                    continue
                try:
                    self._pairs[s].sendall(data)
                except OSError:
                    self._drop(sel, s)
            if self._cut.is_set():
                self._stop.wait(0.02)   # the sockets stay readable: do not spin
        sel.close()
