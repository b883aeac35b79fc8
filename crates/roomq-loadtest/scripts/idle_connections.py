# W8: opens N idle sessions to a running roomqd and reports its RSS growth per
# session. Each connection sends a handshake and reads the HandshakeOk, then
# stays idle.
#
#   python3 idle_connections.py PORT N PID          # TCP listener
#   python3 idle_connections.py PORT N PID ws       # HTTP listener's /ws
import base64, os, socket, sys, time, resource
h = resource.getrlimit(resource.RLIMIT_NOFILE)[1]; resource.setrlimit(resource.RLIMIT_NOFILE, (h, h))
port = int(sys.argv[1]); n = int(sys.argv[2]); pid = int(sys.argv[3])
ws = len(sys.argv) > 4 and sys.argv[4] == "ws"
def rss():
    for l in open(f"/proc/{pid}/status"):
        if l.startswith("VmRSS"): return int(l.split()[1])
# A ClientFrame: request_id 1, Handshake { protocol_version 1 }.
body = bytes([0x08, 0x01, 0x12, 0x02, 0x08, 0x01])
def recv_exact(s, k):
    out = b""
    while len(out) < k:
        chunk = s.recv(k - len(out))
        if not chunk: raise EOFError
        out += chunk
    return out
def open_tcp():
    s = socket.create_connection(("127.0.0.1", port))
    s.sendall(len(body).to_bytes(4, "big") + body)
    return s
def open_ws():
    s = socket.create_connection(("127.0.0.1", port))
    key = base64.b64encode(os.urandom(16)).decode()
    s.sendall((f"GET /ws HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
               f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
               f"Sec-WebSocket-Protocol: roomq.v1\r\n\r\n").encode())
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = s.recv(1024)
        if not chunk: raise EOFError
        head += chunk
    if not head.startswith(b"HTTP/1.1 101"): raise RuntimeError(head.split(b"\r\n")[0])
    mask = os.urandom(4)
    s.sendall(bytes([0x82, 0x80 | len(body)]) + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(body)))
    return s
def read_reply(s):
    if ws:
        b0, b1 = recv_exact(s, 2)
        ln = b1 & 0x7F
        if ln == 126: ln = int.from_bytes(recv_exact(s, 2), "big")
        elif ln == 127: ln = int.from_bytes(recv_exact(s, 8), "big")
        return b0 == 0x82 and len(recv_exact(s, ln)) == ln
    ln = int.from_bytes(recv_exact(s, 4), "big")
    return len(recv_exact(s, ln)) == ln
base = rss(); socks = []
for i in range(n):
    socks.append(open_ws() if ws else open_tcp())
ok = 0
for s in socks:
    s.settimeout(10)
    try:
        ok += read_reply(s)
    except (EOFError, OSError):
        pass
time.sleep(1)
after = rss()
print(f"{'ws' if ws else 'tcp'} connections {n} handshaken {ok} rss before {base} KiB after {after} KiB per-conn {(after-base)/n:.1f} KiB")
