# SPDX-License-Identifier: Apache-2.0
"""A small HTTP/1.1 client over a unix socket that does exactly what it is
told: the raw-socket stack of the client zoo and the regression cases.

Unlike http.client it lets a test pipeline requests in one write, half-close,
stop reading before EOF, hand its fd to a child or a thread, and send bytes no
real client would. Stdlib only (it also runs under Debian's /usr/bin/python3)."""
import json
import socket

API = "/v1.41"


class Response:
    def __init__(self, status, reason, headers, body, head):
        self.status = status
        self.reason = reason
        self.headers = headers  # lower-case name -> value (last wins)
        self.body = body
        self.head = head        # the raw head bytes
        self.upgraded = False   # 101, or a hijacked 200 (attach/exec): the stream follows

    def json(self):
        return json.loads(self.body)

    def __repr__(self):
        return "<%d %s %r>" % (self.status, self.reason, self.body[:120])


def request(method, path, body=None, headers=None, close=False, version=API, content_type="application/json"):
    """The bytes of one request. body: bytes, str, or an object sent as JSON."""
    if body is not None and not isinstance(body, (bytes, bytearray)):
        body = (body if isinstance(body, str) else json.dumps(body)).encode()
    lines = ["%s %s%s HTTP/1.1" % (method, version, path), "Host: docker"]
    if body is not None:
        lines.append("Content-Type: " + (content_type or "application/json"))
        lines.append("Content-Length: %d" % len(body))
    elif method in ("POST", "PUT"):
        lines.append("Content-Length: 0")
    for k, v in (headers or {}).items():
        lines.append("%s: %s" % (k, v))
    if close:
        lines.append("Connection: close")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + (body or b"")


class Conn:
    """One connection to the Docker socket with its own read buffer."""

    def __init__(self, path=None, sock=None, timeout=60):
        if sock is None:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.settimeout(timeout)
            sock.connect(path)
        self.sock = sock
        self.buf = b""
        self.eof = False

    @classmethod
    def from_fd(cls, fd, timeout=60):
        s = socket.socket(fileno=fd)
        s.settimeout(timeout)
        return cls(sock=s)

    def fileno(self):
        return self.sock.fileno()

    def send(self, data):
        self.sock.sendall(data)

    def shut_wr(self):
        self.sock.shutdown(socket.SHUT_WR)

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass

    def _fill(self):
        if self.eof:
            return False
        try:
            d = self.sock.recv(65536)
        except ConnectionResetError:
            d = b""
        if not d:
            self.eof = True
            return False
        self.buf += d
        return True

    def _take(self, n):
        while len(self.buf) < n:
            if not self._fill():
                raise ConnectionError("EOF after %d of %d bytes" % (len(self.buf), n))
        out, self.buf = self.buf[:n], self.buf[n:]
        return out

    def _line(self):
        while b"\r\n" not in self.buf:
            if not self._fill():
                raise ConnectionError("EOF in a line")
        line, self.buf = self.buf.split(b"\r\n", 1)
        return line

    def read_head(self):
        while b"\r\n\r\n" not in self.buf:
            if not self._fill():
                raise ConnectionError("EOF before a response head (%d bytes: %r)" % (len(self.buf), self.buf[:80]))
        head, self.buf = self.buf.split(b"\r\n\r\n", 1)
        lines = head.split(b"\r\n")
        parts = lines[0].decode("latin-1").split(" ", 2)
        status = int(parts[1])
        headers = {}
        for ln in lines[1:]:
            k, _, v = ln.decode("latin-1").partition(":")
            headers[k.strip().lower()] = v.strip()
        return Response(status, parts[2] if len(parts) > 2 else "", headers, b"", head)

    def read_response(self, method="GET", stream=False):
        """One response. stream=True: a hijacking call (attach, exec start):
        on 101 or a 200 without framing, returns with upgraded set and the
        stream left to read_stream()."""
        r = self.read_head()
        while 100 <= r.status < 200 and r.status != 101:
            r = self.read_head()
        if r.status == 101:
            r.upgraded = True
            return r
        te = r.headers.get("transfer-encoding", "").lower()
        cl = r.headers.get("content-length")
        if method == "HEAD" or r.status in (204, 304):
            return r
        if "chunked" in te:
            body = b""
            while True:
                size = int(self._line().split(b";")[0], 16)
                if size == 0:
                    while self._line():
                        pass
                    break
                body += self._take(size)
                self._take(2)
            r.body = body
        elif cl is not None:
            r.body = self._take(int(cl))
        elif stream and r.status == 200:
            r.upgraded = True
        else:
            while self._fill():
                pass
            r.body, self.buf = self.buf, b""
        return r

    def read_stream(self):
        """Everything to EOF (a hijacked stream after its response)."""
        while self._fill():
            pass
        out, self.buf = self.buf, b""
        return out

    def call(self, method, path, body=None, close=False, headers=None, **kw):
        self.send(request(method, path, body, headers=headers, close=close, **kw))
        return self.read_response(method)


def once(path, method, target, body=None, **kw):
    """One request on its own connection with Connection: close, read to EOF."""
    c = Conn(path)
    try:
        r = c.call(method, target, body, close=True, **kw)
        c.read_stream()
        return r
    finally:
        c.close()


def demux(stream):
    """The payload of Docker's multiplexed stdout/stderr stream (non-TTY)."""
    out = b""
    while len(stream) >= 8:
        n = int.from_bytes(stream[4:8], "big")
        out += stream[8:8 + n]
        stream = stream[8 + n:]
    return out
