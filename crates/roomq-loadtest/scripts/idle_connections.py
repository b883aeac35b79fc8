import socket, os, sys, time, resource
h = resource.getrlimit(resource.RLIMIT_NOFILE)[1]; resource.setrlimit(resource.RLIMIT_NOFILE, (h, h))
port = int(sys.argv[1]); n = int(sys.argv[2]); pid = int(sys.argv[3])
def rss():
    for l in open(f"/proc/{pid}/status"):
        if l.startswith("VmRSS"): return int(l.split()[1])
frame = bytes([0,0,0,6, 0x08,0x01, 0x12,0x02, 0x08,0x01])
base = rss(); socks = []
for i in range(n):
    s = socket.create_connection(("127.0.0.1", port)); s.sendall(frame); socks.append(s)
ok = 0
for s in socks:
    s.settimeout(10); hdr = s.recv(4)
    if len(hdr) == 4:
        ln = int.from_bytes(hdr, "big"); body = b""
        while len(body) < ln: body += s.recv(ln - len(body))
        if body[:4] != b"" and body[2:3] != b"": ok += 1
time.sleep(1)
after = rss()
print(f"connections {n} handshaken {ok} rss before {base} KiB after {after} KiB per-conn {(after-base)/n:.1f} KiB")
