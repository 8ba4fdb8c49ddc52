"""Log injection: names an unauthenticated client chooses (user, database,
application name) reach ferry's log only escaped. Whatever the bytes (newline,
quotes, backslash, '=', spaces, bytes that are not UTF-8), every event is one
line; in text format every line is ts/level/event then key=value pairs, in
JSON format one object with no repeated key; no client forges an event."""

import base64
import json
import re
import socket
import struct

import pytest

import harness
from fronts import my_listener, pg_listener
from harness import make_config
from harness.mariadb import TEST_PASSWORD as MY_PASSWORD
from harness.mariadb import TEST_USER as MY_USER
from harness.proc import wait_for
from test_mysql_protocol import CAPS, packet

# User names fit ferry's 63 bytes; each tries another way out of its value.
HOSTILE = [
    b"a\nts=2026-01-01T00:00:00.000Z level=error event=forged.nl",
    b'b" event=forged.quote x="',
    b'c\\" event=forged.bs k=\\',
    b"d=e f=g event=forged.eq",
    b"e \xff\xfe\xc3( event=forged.utf8 \x1b[31m\x7f",
    b"f\r\t",
]
FORGED = re.compile(r"forged\.\w+")
PAIR = re.compile(r' ([a-z_][a-z0-9_.]*)=("(?:[^"\\]|\\.)*"|[^ "=]*)')
HEAD = re.compile(r'^ts=\S+ level=(debug|info|warn|error) event=([a-z_][a-z0-9_.]*)')


def unescape(value):
    """A text-format value as the bytes it stands for."""
    if not value.startswith('"'):
        return value.encode()
    out, s, i = bytearray(), value[1:-1], 0
    while i < len(s):
        if s[i] == "\\" and s[i + 1] == "x":
            out.append(int(s[i + 2:i + 4], 16))
            i += 4
        elif s[i] == "\\":
            out += s[i + 1].encode()
            i += 2
        else:
            out += s[i].encode()
            i += 1
    return bytes(out)


def text_events(raw):
    """Parses a text-format log strictly: [(event, {key: bytes})]."""
    events = []
    for line in raw.split(b"\n")[:-1]:
        text = line.decode("utf-8")     # escaping leaves only UTF-8
        head = HEAD.match(text)
        assert head, f"not a log line: {line!r}"
        rest, fields = text[head.end():], {}
        while rest:
            m = PAIR.match(rest)
            assert m, f"bad key=value in {line!r} at {rest!r}"
            assert m.group(1) not in fields and m.group(1) not in ("ts", "level", "event"), line
            fields[m.group(1)] = unescape(m.group(2))
            rest = rest[m.end():]
        events.append((head.group(2), fields))
    return events


def json_events(raw):
    """Parses a JSON-format log strictly: [(event, {key: str})]."""
    def no_repeats(pairs):
        keys = [k for k, _ in pairs]
        assert len(keys) == len(set(keys)), f"repeated key in {pairs!r}"
        return dict(pairs)
    events = []
    for line in raw.split(b"\n")[:-1]:
        obj = json.loads(line.decode("utf-8"), object_pairs_hook=no_repeats)
        assert list(obj)[:3] == ["ts", "level", "event"], line
        assert all(isinstance(v, str) for v in obj.values()), line
        events.append((obj["event"], obj))
    return events


def as_json_text(name):
    """How a user name reads in a JSON value: bytes that are not UTF-8 as \\xNN."""
    out = ""
    for ch in name.decode("utf-8", "surrogateescape"):
        out += f"\\x{ord(ch) - 0xdc00:02x}" if 0xdc80 <= ord(ch) <= 0xdcff else ch
    return out


def log_in_with_every_name(ferry, bad_login, log_format):
    """bad_login(ferry, name) with each hostile name, then the log is checked."""
    for name in HOSTILE:
        bad_login(ferry, name)
    wait_for(lambda: ferry.log_text().count("session.failed") >= len(HOSTILE), timeout=10,
             what="a session.failed line per login")
    check_log(ferry, log_format, HOSTILE)


def check_log(ferry, log_format, names, failed_event="session.failed"):
    """Every line parses, no forged event, and one failure line per name whose
    reason holds the name exactly."""
    with open(ferry.log_path, "rb") as f:
        raw = f.read()
    events = text_events(raw) if log_format == "text" else json_events(raw)
    assert not [e for e, _ in events if FORGED.search(e)]
    reasons = [fields["reason"] for e, fields in events if e == failed_event]
    assert len(reasons) == len(names), reasons
    for name, reason in zip(names, reasons):
        want = name if log_format == "text" else as_json_text(name)
        assert want in reason, (name, reason)


# ---- PostgreSQL: a SCRAM exchange with a wrong proof, as an unknown user ----

def pg_message(sock, buf=b""):
    while len(buf) < 5 or len(buf) < 1 + struct.unpack("!I", buf[1:5])[0]:
        data = sock.recv(65536)
        assert data, "ferry closed the connection"
        buf += data
    n = 1 + struct.unpack("!I", buf[1:5])[0]
    return buf[:1], buf[5:n], buf[n:]


def pg_bad_login(ferry, user):
    params = (b"user\0" + user + b"\0database\0" + user + b"\0application_name\0" + user +
              b"\0\0")
    body = struct.pack("!I", 196608) + params
    with socket.create_connection(ferry.listener_addr("pg"), timeout=20) as s:
        s.sendall(struct.pack("!I", len(body) + 4) + body)
        t, m, rest = pg_message(s)
        assert t == b"R" and struct.unpack("!I", m[:4])[0] == 10      # SASL
        first = b"n,,n=,r=" + base64.b64encode(b"client-nonce-01234")
        s.sendall(b"p" + struct.pack("!I", 4 + 14 + 4 + len(first)) + b"SCRAM-SHA-256\0" +
                  struct.pack("!I", len(first)) + first)
        t, m, rest = pg_message(s, rest)
        assert t == b"R" and struct.unpack("!I", m[:4])[0] == 11      # SASLContinue
        nonce = dict(f.split(b"=", 1) for f in m[4:].split(b","))[b"r"]
        final = b"c=biws,r=" + nonce + b",p=" + base64.b64encode(bytes(32))
        s.sendall(b"p" + struct.pack("!I", 4 + len(final)) + final)
        t, m, rest = pg_message(s, rest)
    assert t == b"E"
    fields = {f[:1]: f[1:] for f in m.split(b"\0") if f}
    assert fields[b"C"] == b"28P01"


@pytest.mark.parametrize("log_format", ["text", "json"])
def test_pg_names_cannot_forge_log_lines(ferry_factory, pg_pair, log_format):
    cfg = make_config(pg_listener(pg_pair, auth={"mode": "terminated", "users": [
        {"name": harness.pg.TEST_USER, "password": harness.pg.TEST_PASSWORD}]}),
        workers=1, log_format=log_format)
    log_in_with_every_name(ferry_factory(cfg), pg_bad_login, log_format)


# ---- MySQL: a handshake response as an unknown user ----

def my_bad_login(ferry, user):
    with socket.create_connection(ferry.listener_addr("my"), timeout=20) as s:
        buf = b""
        while len(buf) < 4 or len(buf) < 4 + int.from_bytes(buf[:3], "little"):
            buf += s.recv(65536)
        payload = (struct.pack("<IIB", CAPS, 1 << 24, 45) + bytes(23) + user + b"\0" +
                   bytes([20]) + bytes(20) + user + b"\0" + b"mysql_native_password\0")
        s.sendall(packet(payload, 1))
        buf = b""
        while len(buf) < 4 or len(buf) < 4 + int.from_bytes(buf[:3], "little"):
            data = s.recv(65536)
            assert data, "ferry closed the connection"
            buf += data
    err = buf[4:4 + int.from_bytes(buf[:3], "little")]
    assert err[:3] == b"\xff" + struct.pack("<H", 1045), err     # the name may not be UTF-8


@pytest.mark.parametrize("log_format", ["text", "json"])
def test_mysql_names_cannot_forge_log_lines(ferry_factory, mariadb_pair, log_format):
    cfg = make_config(my_listener(mariadb_pair, auth={"mode": "terminated", "users": [
        {"name": MY_USER, "password": MY_PASSWORD}]}), workers=1, log_format=log_format)
    log_in_with_every_name(ferry_factory(cfg), my_bad_login, log_format)
