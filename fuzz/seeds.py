#!/usr/bin/env python3
"""Writes the starting inputs of the fuzz targets into DIR/<target>/ (default /tmp/sluice-fuzz-seeds).

Realistic inputs that reach deep into each parser at once; the fuzzer mutates from there.
The sip target also starts from the RFC 4475/5118 torture messages of sip/tests/corpus,
read from there (the repository keeps one copy). Binary formats are built here so that their fields are visible.
"""
import os, struct, sys

out = sys.argv[1] if len(sys.argv) > 1 else "/tmp/sluice-fuzz-seeds"
here = os.path.dirname(os.path.abspath(__file__))
seeds = {}

def add(target, name, data):
    if isinstance(data, str):
        data = data.encode()
    seeds.setdefault(target, []).append((name, data))

SDP = ("v=0\r\no=- 1545997027 1 IN IP4 198.51.100.1\r\ns=tester\r\nc=IN IP4 198.51.100.1\r\n"
       "t=0 0\r\nm=audio 2000 RTP/AVP 0 8 101\r\na=rtpmap:0 PCMU/8000\r\na=rtpmap:8 PCMA/8000\r\n"
       "a=rtpmap:101 telephone-event/8000\r\na=fmtp:101 0-16\r\na=ptime:20\r\na=sendrecv\r\n")
SDP_SRTP = ("v=0\r\no=alice 2890844526 2890844527 IN IP6 2001:db8::1\r\ns=-\r\nt=0 0\r\n"
            "a=group:BUNDLE 0\r\nm=audio 49170 RTP/SAVP 111 0\r\nc=IN IP6 2001:db8::1\r\n"
            "a=rtcp:49171 IN IP6 2001:db8::1\r\na=rtcp-mux\r\na=rtpmap:111 opus/48000/2\r\n"
            "a=fmtp:111 minptime=10;useinbandfec=1;maxaveragebitrate=20000\r\n"
            "a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:PS1uQCVeeCFCanVmcjkpPywjNWhcYD0mXXtxaVBR|2^20|1:32\r\n"
            "a=crypto:2 AEAD_AES_256_GCM inline:MTIzNDU2Nzg5MDEyMzQ1Njc4OTAxMjM0NTY3ODkwMTIzNDU2Nzg5MDEy\r\n"
            "a=candidate:1 1 UDP 2130706431 2001:db8::1 49170 typ host\r\na=recvonly\r\n"
            "m=video 0 RTP/AVP 96\r\na=rtpmap:96 H264/90000\r\nm=image 5000 udptl t38\r\n")
SDP_HOLD = ("v=0\no=- 7 8 IN IP4 0.0.0.0\ns= \nc=IN IP4 0.0.0.0\nb=AS:64\nt=0 0\na=sendonly\n"
            "m=audio 3456 RTP/AVP 18 9\na=rtpmap:18 G729/8000\na=fmtp:18 annexb=no\na=inactive\n")
for i, s in enumerate([SDP, SDP_SRTP, SDP_HOLD]):
    add("sdp", f"sdp{i}", s)

INVITE = ("INVITE sip:bob@biloxi.example.com SIP/2.0\r\n"
          "Via: SIP/2.0/UDP pc33.atlanta.example.com;branch=z9hG4bK776asdhds;rport\r\n"
          "Max-Forwards: 70\r\nTo: Bob <sip:bob@biloxi.example.com>\r\n"
          "From: Alice <sip:alice@atlanta.example.com>;tag=1928301774\r\n"
          "Call-ID: a84b4c76e66710@pc33.atlanta.example.com\r\nCSeq: 314159 INVITE\r\n"
          "Contact: <sip:alice@pc33.atlanta.example.com;transport=tcp>\r\n"
          "Record-Route: <sip:p1.example.com;lr>, <sip:[2001:db8::9]:5062;lr>\r\n"
          "Supported: 100rel, timer\r\nSession-Expires: 1800;refresher=uac\r\n"
          "Content-Type: application/sdp\r\nContent-Length: %d\r\n\r\n%s") % (len(SDP), SDP)
OK = ("SIP/2.0 200 OK\r\nVia: SIP/2.0/TLS [2001:db8::1]:5061;branch=z9hG4bK776asdhds;received=192.0.2.4\r\n"
      "To: Bob <sip:bob@biloxi.example.com>;tag=a6c85cf\r\nFrom: Alice <sip:alice@atlanta.example.com>;tag=1928301774\r\n"
      "Call-ID: a84b4c76e66710\r\nCSeq: 314159 INVITE\r\nContact: <sips:bob@192.0.2.4>\r\nRequire: timer\r\n"
      "Content-Length: 0\r\n\r\n")
BYE = ("BYE sip:alice@pc33.atlanta.example.com SIP/2.0\r\nVia: SIP/2.0/TCP 192.0.2.4;branch=z9hG4bKnashds10\r\n"
       "Max-Forwards: 70\r\nRoute: <sip:p1.example.com;lr>\r\nFrom: Bob <sip:bob@biloxi.example.com>;tag=a6c85cf\r\n"
       "To: Alice <sip:alice@atlanta.example.com>;tag=1928301774\r\nCall-ID: a84b4c76e66710\r\nCSeq: 231 BYE\r\nl: 0\r\n\r\n")
add("sip", "invite", INVITE)
add("sip", "ok", OK)
add("sip", "stream", "\r\n\r\n" + OK + BYE + "\r\n")

def ben(v):
    if isinstance(v, int): return b"i%de" % v
    if isinstance(v, str): v = v.encode()
    if isinstance(v, bytes): return b"%d:%s" % (len(v), v)
    if isinstance(v, list): return b"l" + b"".join(ben(x) for x in v) + b"e"
    if isinstance(v, dict): return b"d" + b"".join(ben(k) + ben(v[k]) for k in sorted(v)) + b"e"
offer = {"command": "offer", "call-id": "c1@host", "from-tag": "ft", "sdp": SDP,
         "flags": ["trust-address", "SIP-source-address"], "replace": ["origin", "session-connection"],
         "ICE": "remove", "transport-protocol": "RTP/SAVP", "rtcp-mux": ["demux"], "direction": ["external", "internal"],
         "codec": {"transcode": ["PCMA"], "strip": ["G729"], "mask": ["opus"]}, "received-from": ["IP4", "192.0.2.4"],
         "supports": ["load limit"], "via-branch": "z9hG4bK1", "DTLS": "off", "SDES": ["off"], "label": "caller"}
answer = {"command": "answer", "call-id": "c1@host", "from-tag": "ft", "to-tag": "tt", "sdp": SDP_SRTP}
add("ng", "offer", b"5323_1 " + ben(offer))
add("ng", "answer", b"abc ".ljust(4) + ben(answer))
add("ng", "tcp", b"1 " + ben({"command": "ping"}) + b"\r\n2 " + ben({"command": "delete", "call-id": "c1", "from-tag": "ft", "delete-delay": 0}) + b"3 " + ben({"command": "query", "call-id": "c1", "x": [1, -2, []]}))
add("ng", "json", b'9 {"command": "list", "limit": 32, "flags": ["all"], "nested": {"a": [1, true, null, 2.5, "\\u00e9"]}}')

def rtp(seq, pt=0, payload=b"\xff" * 160, csrc=(), ext=None, pad=0, marker=False, ssrc=0x1234_5678):
    b0 = 0x80 | len(csrc) | (0x10 if ext is not None else 0) | (0x20 if pad else 0)
    h = struct.pack("!BBHII", b0, pt | (0x80 if marker else 0), seq, seq * 160, ssrc)
    h += b"".join(struct.pack("!I", c) for c in csrc)
    if ext is not None:
        h += struct.pack("!HH", 0xbede, len(ext) // 4) + ext
    body = h + payload
    if pad:
        body += b"\0" * (pad - 1) + bytes([pad])
    return body

def rtcp(pt, count, body):
    length = (len(body) + 4) // 4 - 1
    return struct.pack("!BBH", 0x80 | count, pt, length) + body

block = struct.pack("!IIIIII", 0x1234_5678, (25 << 24) | 3, 0x0001_0010, 20, 0xaabb_ccdd, 655)
sr = rtcp(200, 1, struct.pack("!IIIIII", 0x9abc_def0, 0xe000_0000, 0x1000_0000, 160, 50, 8000) + block)
rr = rtcp(201, 1, struct.pack("!I", 0x9abc_def0) + block)
sdes = rtcp(202, 1, struct.pack("!I", 0x9abc_def0) + b"\x01\x06sluice\x00\x00")
bye = rtcp(203, 1, struct.pack("!I", 0x9abc_def0))
xr = rtcp(207, 0, struct.pack("!I", 0x9abc_def0) + struct.pack("!BBHII", 4, 0, 2, 1, 2))
add("rtp", "rtp_plain", rtp(1))
add("rtp", "rtp_full", rtp(65535, 111, b"opus", csrc=(1, 2), ext=b"\x10\xaa\x00\x00", pad=4, marker=True))
add("rtp", "rtcp_sr_sdes_bye", sr + sdes + bye)
add("rtp", "rtcp_rr_xr", rr + xr)

def rec(op, data):
    return bytes([op, len(data)]) + data
for profile in range(4):
    script = bytes([profile])
    script += rec(2, rtp(1)[:60]) + rec(2, rtp(2, csrc=(7,), ext=b"\x10\xaa\x00\x00")[:60])
    script += rec(3, (sr + sdes)[:100]) + rec(2 | 4 | 0x20, rtp(3)[:40]) + rec(2, rtp(1)[:40])
    script += rec(0, rtp(9)[:50]) + rec(1, (rr + b"\x80\x00\x00\x01" + b"\0" * 10)[:80])
    add("srtp", f"script{profile}", script)

def udp(payload, sport=5004, dport=30000):
    return struct.pack("!HHHH", sport, dport, 8 + len(payload), 0) + payload
def ipv4(payload, ttl=64):
    h = struct.pack("!BBHHHBBH4s4s", 0x45, 0xb8, 20 + len(payload), 1, 0x4000, ttl, 17, 0,
                    bytes([192, 0, 2, 4]), bytes([198, 51, 100, 1]))
    return h + payload
def ipv6(payload, hop=64):
    return struct.pack("!IHBB16s16s", 0x6000_0000, len(payload), 17, hop,
                       bytes.fromhex("20010db8000000000000000000000004"),
                       bytes.fromhex("20010db8000000000000000000000001")) + payload
eth4 = b"\x02" * 6 + b"\x04" * 6 + b"\x08\x00"
eth6 = b"\x02" * 6 + b"\x04" * 6 + b"\x86\xdd"
add("frame", "ipv4", eth4 + ipv4(udp(rtp(5))))
add("frame", "ipv4_options", eth4 + b"\x46" + ipv4(udp(rtp(6)))[1:20] + b"\x01\x01\x01\x00" + ipv4(udp(rtp(6)))[20:])
add("frame", "ipv6", eth6 + ipv6(udp(rtp(7, payload=b"\x00" * 20))))
add("frame", "ipv4_padded", eth4 + ipv4(udp(b"x")) + b"\0" * 17)

add("config", "full", """control = "unix:/run/sluice/control.sock"
metrics = "127.0.0.1:9090"
ng = ["udp:127.0.0.1:2223", "tcp:[::1]:2223"]
sip = ["udp:0.0.0.0:5060", "tcp:[::]:5060", "tls:0.0.0.0:5061"]
route = ["sip:192.0.2.9:5080;transport=tcp", "sip:localhost"]
max-calls = 1000
max-sessions = 5000
socket-pool = 100
max-load = 4.5
max-cpu = 90.0
media-ip = ["192.0.2.1", "2001:db8::1"]
ports = "30000-39999"
timeout = 60
log-level = "info,sluice=debug"
allow-remote-control = false
xdp = "auto"
xdp-iface = ["eth0"]
xdp-metadata = "off"
workers = 2
worker-cores = "0,2-3"
transcode = "auto"
opus-complexity = 5
opus-bitrate = 24000
worker-spin-us = 50
""")
add("config", "small", 'ports = "40000-40099"\ntimeout = 5\nmedia-ip = ["127.0.0.2"]\n')
add("config", "tables", '# comment\ncontrol = \'tcp:10.1.2.3:2223\'\nallow-remote-control = true\nworkers = 0\nxdp = "generic"\n')

def varint(n):
    out = b""
    while True:
        b = n & 0x7f; n >>= 7
        if n: out += bytes([b | 0x80])
        else: return out + bytes([b])
def field(num, wire, value):
    key = varint((num << 3) | wire)
    if wire == 0: return key + varint(value)
    return key + varint(len(value)) + value
leg = (field(1, 0, 1) + field(2, 0, 1) + field(3, 0, 2) + field(4, 0, 3) + field(5, 0, 4) + field(6, 0, 1)
       + field(7, 0, 1) + field(8, 2, b"PCMA,opus") + field(9, 2, b"G729") + field(10, 2, b"pcmu")
       + field(11, 2, b"192.0.2.4"))
add("grpc", "offer", b"\x00" + field(1, 2, b"call-1") + field(2, 2, b"ft") + field(3, 2, SDP.encode()) + field(4, 2, leg))
add("grpc", "answer", b"\x01" + field(1, 2, b"call-1") + field(2, 2, b"ft") + field(3, 2, b"tt") + field(5, 2, field(11, 2, b"2001:db8::4") + field(5, 0, 9)))
add("grpc", "options", b"\x02" + leg)
add("grpc", "delete", b"\x03" + field(1, 2, b"call-1") + field(3, 2, b"tt"))

for target, files in seeds.items():
    d = os.path.join(out, target)
    os.makedirs(d, exist_ok=True)
    for name, data in files:
        with open(os.path.join(d, name), "wb") as f:
            f.write(data)
sip_dir = os.path.join(out, "sip")
for sub in ("rfc4475", "rfc5118"):
    src = os.path.join(here, "..", "sip", "tests", "corpus", sub)
    for name in sorted(os.listdir(src)):
        if os.path.isfile(os.path.join(src, name)) and not name.endswith(".md"):
            # Copied (AFL++ skips symbolic links), into the scratch directory only.
            with open(os.path.join(src, name), "rb") as f, open(os.path.join(sip_dir, f"{sub}_{name}"), "wb") as g:
                g.write(f.read())
print(out)
