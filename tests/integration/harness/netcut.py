"""A TCP relay between ferry and a server that a test can cut, for network
partitions: when cut, bytes stop flowing both ways and new connections are
accepted but never answered (a blackhole, like a dead route — not a refusal),
until restore(). Runs in a daemon thread on 127.0.0.1; bounded buffers."""

import selectors
import socket
import threading

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
        self._thread = threading.Thread(target=self._run, name="netcut", daemon=True)
        self._thread.start()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def cut(self):
        self._cut.set()

    def restore(self):
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
        for a, b in ((client, upstream), (upstream, client)):
            a.setblocking(False)
            self._pairs[a] = b
            sel.register(a, selectors.EVENT_READ)

    def _drop(self, sel, s):
        for x in (s, self._pairs.get(s)):
            if x is not None and x in self._pairs:
                sel.unregister(x)
                del self._pairs[x]
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
