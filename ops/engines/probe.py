#!/usr/bin/env python3
"""Readiness probes for the engines, standard library only.

Usage: probe.py kafka HOST PORT   # ApiVersions, then Metadata: >= 1 broker and a controller
       probe.py cql HOST PORT     # CQL OPTIONS frame (protocol v4) answered by SUPPORTED
Exit 0 when the engine answers properly, 1 otherwise (reason on stderr).
"""
import socket
import struct
import sys

TIMEOUT = 5.0


def recv_exact(sock, n):
    buf = b""
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise ConnectionError("connection closed after %d of %d bytes" % (len(buf), n))
        buf += chunk
    return buf


def kafka_call(sock, api_key, version, correlation_id, body):
    client_id = b"switchboard-probe"
    # Request header v1: api_key, api_version, correlation_id, client_id (nullable string).
    header = struct.pack(">hhih", api_key, version, correlation_id, len(client_id)) + client_id
    payload = header + body
    sock.sendall(struct.pack(">i", len(payload)) + payload)
    (size,) = struct.unpack(">i", recv_exact(sock, 4))
    resp = recv_exact(sock, size)
    (cid,) = struct.unpack(">i", resp[:4])
    if cid != correlation_id:
        raise ValueError("correlation id %d != %d" % (cid, correlation_id))
    return resp[4:]  # response header v0 is just the correlation id


def probe_kafka(host, port):
    with socket.create_connection((host, port), timeout=TIMEOUT) as sock:
        sock.settimeout(TIMEOUT)
        # ApiVersions v0 (api key 18): error_code, [api_key, min, max].
        resp = kafka_call(sock, 18, 0, 1, b"")
        error, count = struct.unpack(">hi", resp[:6])
        if error != 0:
            raise ValueError("ApiVersions error %d" % error)
        versions = {}
        for i in range(count):
            key, lo, hi = struct.unpack(">hhh", resp[6 + 6 * i : 12 + 6 * i])
            versions[key] = (lo, hi)
        if 3 not in versions:
            raise ValueError("broker lists no Metadata api")
        lo, hi = versions[3]
        # Highest non-flexible Metadata version is 8; 4+ carries throttle_time and cluster_id.
        version = min(hi, 8)
        if version < max(lo, 4):
            raise ValueError("no usable Metadata version in %d..%d" % (lo, hi))
        # Metadata request v4..v8: topics = null (all), allow_auto_topic_creation = false,
        # v8 adds include_cluster/topic_authorized_operations.
        body = struct.pack(">i?", 0, False)  # empty topic list: brokers and controller only
        if version >= 8:
            body += struct.pack(">??", False, False)
        resp = kafka_call(sock, 3, version, 2, body)
        off = 4  # throttle_time_ms
        (nbrokers,) = struct.unpack(">i", resp[off : off + 4])
        off += 4
        brokers = []
        for _ in range(nbrokers):
            node_id, hlen = struct.unpack(">ih", resp[off : off + 6])
            off += 6
            bhost = resp[off : off + hlen].decode()
            off += hlen
            (bport, rlen) = struct.unpack(">ih", resp[off : off + 6])
            off += 6 + max(rlen, 0)
            brokers.append("%d@%s:%d" % (node_id, bhost, bport))
        (clen,) = struct.unpack(">h", resp[off : off + 2])
        off += 2
        cluster_id = resp[off : off + clen].decode() if clen >= 0 else None
        off += max(clen, 0)
        (controller,) = struct.unpack(">i", resp[off : off + 4])
        if not brokers or controller < 0:
            raise ValueError("metadata not ready: brokers=%s controller=%d" % (brokers, controller))
        return "kafka cluster %s brokers %s controller %d" % (cluster_id, ",".join(brokers), controller)


def probe_cql(host, port):
    with socket.create_connection((host, port), timeout=TIMEOUT) as sock:
        sock.settimeout(TIMEOUT)
        # Frame header v4: version 0x04 (request), flags 0, stream 1, opcode 0x05 OPTIONS, length 0.
        sock.sendall(struct.pack(">BBhBi", 0x04, 0x00, 1, 0x05, 0))
        version, _flags, stream, opcode, length = struct.unpack(">BBhBi", recv_exact(sock, 9))
        body = recv_exact(sock, length)
        if version != 0x84 or stream != 1 or opcode != 0x06:
            raise ValueError("unexpected reply version=%#x stream=%d opcode=%#x" % (version, stream, opcode))
        # SUPPORTED body: string multimap; show CQL_VERSION if present.
        (n,) = struct.unpack(">h", body[:2])
        off, info = 2, {}
        for _ in range(n):
            (klen,) = struct.unpack(">h", body[off : off + 2])
            key = body[off + 2 : off + 2 + klen].decode()
            off += 2 + klen
            (m,) = struct.unpack(">h", body[off : off + 2])
            off += 2
            vals = []
            for _ in range(m):
                (vlen,) = struct.unpack(">h", body[off : off + 2])
                vals.append(body[off + 2 : off + 2 + vlen].decode())
                off += 2 + vlen
            info[key] = vals
        return "cql %s protocols %s" % (",".join(info.get("CQL_VERSION", [])), ",".join(info.get("PROTOCOL_VERSIONS", [])))


def main():
    if len(sys.argv) != 4 or sys.argv[1] not in ("kafka", "cql"):
        sys.stderr.write(__doc__)
        return 2
    kind, host, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
    try:
        print((probe_kafka if kind == "kafka" else probe_cql)(host, port))
        return 0
    except Exception as exc:  # any failure means "not answering yet"
        sys.stderr.write("%s %s:%d: %s\n" % (kind, host, port, exc))
        return 1


if __name__ == "__main__":
    sys.exit(main())
