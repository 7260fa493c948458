#!/usr/bin/env python3
"""Writes the DNS/mDNS packets of this directory (run from here: python3 make.py).

The packets are laid out as Avahi and dnsmasq write them: names compressed (RFC 1035 §4.1.4),
mDNS answers with ID 0 and the cache-flush bit on unique records (RFC 6762 §10.2).
"""
import struct

class W:
    def __init__(self):
        self.b = bytearray()
        self.names = {}

    def name(self, n):
        labels = n.rstrip('.').split('.') if n not in ('', '.') else []
        # `\.` inside a label is a literal dot
        out = []
        cur = ''
        i = 0
        parts = []
        s = n.rstrip('.')
        while i < len(s):
            if s[i] == '\\' and i + 1 < len(s):
                cur += s[i + 1]; i += 2; continue
            if s[i] == '.':
                parts.append(cur); cur = ''; i += 1; continue
            cur += s[i]; i += 1
        if cur: parts.append(cur)
        for k in range(len(parts)):
            suffix = '.'.join(p.lower() for p in parts[k:])
            if suffix in self.names:
                self.b += struct.pack('>H', 0xC000 | self.names[suffix]); return
            if len(self.b) < 0x3FFF:
                self.names[suffix] = len(self.b)
            lab = parts[k].encode()
            self.b += bytes([len(lab)]) + lab
        self.b += b'\0'

    def rr(self, name, typ, ttl, rdata_fn, flush=False):
        self.name(name)
        self.b += struct.pack('>HHI', typ, 1 | (0x8000 if flush else 0), ttl)
        at = len(self.b); self.b += b'\0\0'
        rdata_fn(self)
        struct.pack_into('>H', self.b, at, len(self.b) - at - 2)

def header(w, id, flags, qd, an, ns, ar):
    w.b += struct.pack('>HHHHHH', id, flags, qd, an, ns, ar)

A, PTR, TXT, AAAA, SRV, MX = 1, 12, 16, 28, 33, 15
svc = '_prometheus-http._tcp.local'

def ptr(t): return lambda w: w.name(t)
def srv(port, t): return lambda w: (w.b.extend(struct.pack('>HHH', 0, 0, port)), w.name(t))
def txt(*ss): return lambda w: [w.b.extend(bytes([len(s)]) + s) for s in ss]
def a(ip): return lambda w: w.b.extend(bytes(int(x) for x in ip.split('.')))
def aaaa(*groups): return lambda w: w.b.extend(struct.pack('>8H', *groups))

# 1. A full answer: PTR, and as additional records SRV, TXT, A, AAAA (Avahi's layout).
w = W(); header(w, 0, 0x8400, 0, 1, 0, 4)
inst = 'node 1.' + svc
w.rr(svc, PTR, 4500, ptr(inst))
w.rr(inst, SRV, 120, srv(9100, 'node1.local'), flush=True)
w.rr(inst, TXT, 4500, txt(b'path=probe', b'Env=lab', b'bool', b'env=dup', b'x-y=1', b'=nokey'), flush=True)
w.rr('node1.local', A, 120, a('10.0.0.2'), flush=True)
w.rr('node1.local', AAAA, 120, aaaa(0xfe80, 0, 0, 0, 0, 0, 0, 1), flush=True)
open('mdns-full-answer.bin', 'wb').write(w.b)

# 2. PTR only, for an instance whose name holds a dot (escaped in text as `\.`).
w = W(); header(w, 0, 0x8400, 0, 1, 0, 0)
w.rr(svc, PTR, 4500, ptr(r'gw\.2.' + svc))
open('mdns-ptr-only.bin', 'wb').write(w.b)

# 3. The answers to the follow-up questions for it: SRV and TXT, then the host's AAAA only.
w = W(); header(w, 0, 0x8400, 0, 2, 0, 0)
w.rr(r'gw\.2.' + svc, SRV, 120, srv(9200, 'gw2.local'), flush=True)
w.rr(r'gw\.2.' + svc, TXT, 4500, txt(b''), flush=True)
open('mdns-srv-txt.bin', 'wb').write(w.b)
w = W(); header(w, 0, 0x8400, 0, 1, 0, 0)
w.rr('gw2.local', AAAA, 120, aaaa(0xfd00, 0, 0, 0, 0, 0, 0, 2), flush=True)
open('mdns-aaaa.bin', 'wb').write(w.b)

# 4. A goodbye: the PTR of node 1 with TTL 0.
w = W(); header(w, 0, 0x8400, 0, 1, 0, 0)
w.rr(svc, PTR, 0, ptr(inst))
open('mdns-goodbye.bin', 'wb').write(w.b)

# 5. Malformed: counts that cannot fit, a cut record, a compression pointer loop.
open('bad-counts.bin', 'wb').write(struct.pack('>HHHHHH', 0, 0x8400, 0, 0xffff, 0, 0))
full = open('mdns-full-answer.bin', 'rb').read()
open('bad-cut.bin', 'wb').write(full[:len(full) // 2])
w = W(); header(w, 0, 0x8400, 0, 1, 0, 0)
w.b += struct.pack('>H', 0xC000 | 12)  # the owner name points at itself
w.b += struct.pack('>HHIH', PTR, 1, 10, 2) + struct.pack('>H', 0xC000 | 12)
open('bad-loop.bin', 'wb').write(w.b)

# 6. Unicast DNS: an SRV answer for _node._tcp.lan (dnsmasq's layout, ID 0x1234, RD RA).
w = W(); header(w, 0x1234, 0x8180, 1, 2, 0, 0)
w.name('_node._tcp.lan'); w.b += struct.pack('>HH', SRV, 1)
w.rr('_node._tcp.lan', SRV, 0, srv(9100, 'n1.lan'))
w.rr('_node._tcp.lan', SRV, 0, srv(9101, 'n2.lan'))
open('dns-srv-answer.bin', 'wb').write(w.b)
