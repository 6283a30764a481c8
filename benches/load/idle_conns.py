#!/usr/bin/env python3
"""Open N keep-alive client connections to a proxy and hold them.

usage: idle_conns.py HOST PORT N [--request]

With --request, one `GET /` is sent on each connection (and its response read)
right after it is opened, so the proxy has served a request on every
connection before they all sit idle. Connections are opened one after another
(loopback, so 10,000 take a second or two) and none is closed.

Prints `READY <opened> <failed>` once all are open, then obeys lines on stdin:
  check   send one request on every 100th connection, print `CHECK <ok> <tried>`
  (EOF)   close everything and exit
Exits non-zero with a message if the file-descriptor limit is too low.
Standard library only.
"""

import resource
import socket
import sys

REQUEST = b"GET / HTTP/1.1\r\nHost: bench\r\nUser-Agent: idle-conns\r\n\r\n"


def read_response(s):
    """Reads one response with a Content-Length body; True when it is a 2xx."""
    buf = b""
    while b"\r\n\r\n" not in buf:
        chunk = s.recv(4096)
        if not chunk:
            return False
        buf += chunk
    head, _, body = buf.partition(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value.strip())
    while len(body) < length:
        chunk = s.recv(4096)
        if not chunk:
            return False
        body += chunk
    return head.startswith(b"HTTP/1.1 2")


def request(s):
    try:
        s.sendall(REQUEST)
        return read_response(s)
    except OSError:
        return False


def main():
    args = [a for a in sys.argv[1:] if not a.startswith("--")]
    if len(args) != 3:
        sys.exit(__doc__)
    host, port, n = args[0], int(args[1]), int(args[2])
    send = "--request" in sys.argv

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = n + 64
    if soft < want:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (min(max(want, soft), hard), hard))
        except (ValueError, OSError):
            pass
        soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < want:
        sys.exit(f"idle_conns: the open-file limit is {soft}, {want} are needed: raise `ulimit -n`")

    conns, failed, first_error = [], 0, None
    for _ in range(n):
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        s.settimeout(5)
        try:
            s.connect((host, port))
            if send and not request(s):
                raise OSError("no 2xx response")
            conns.append(s)
        except OSError as e:
            failed += 1
            first_error = first_error or repr(e)
            s.close()
    print(f"READY {len(conns)} {failed}" + (f" first-error={first_error}" if first_error else ""), flush=True)

    for line in sys.stdin:
        if line.strip() == "check":
            sample = conns[::100]
            ok = sum(1 for s in sample if request(s))
            print(f"CHECK {ok} {len(sample)}", flush=True)
    for s in conns:
        s.close()


if __name__ == "__main__":
    main()
