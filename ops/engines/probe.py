#!/usr/bin/env python3
"""Readiness probes for the engines, standard library only.

Usage: probe.py kafka HOST PORT             # ApiVersions, then Metadata: >= 1 broker and a controller
       probe.py cql HOST PORT [USER PASSWORD]  # CQL (protocol v4): OPTIONS answered by SUPPORTED,
                                               # then STARTUP answered by READY, or by AUTHENTICATE
                                               # and then the login accepted
Exit 0 when the engine answers properly, 1 otherwise (reason on stderr).
A node with password authentication refuses logins for a few seconds after it answers OPTIONS,
until it has created its default role: only an accepted login means it is ready.
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


def cql_call(sock, stream, opcode, body):
    # Frame header v4: version 0x04 (request), flags 0, stream, opcode, body length.
    sock.sendall(struct.pack(">BBhBi", 0x04, 0x00, stream, opcode, len(body)) + body)
    version, _flags, got, reply, length = struct.unpack(">BBhBi", recv_exact(sock, 9))
    body = recv_exact(sock, length)
    if version != 0x84 or got != stream:
        raise ValueError("unexpected reply version=%#x stream=%d" % (version, got))
    if reply == 0x00:  # ERROR: code, message
        (code, mlen) = struct.unpack(">ih", body[:6])
        raise ValueError("error %#x: %s" % (code, body[6 : 6 + mlen].decode(errors="replace")))
    return reply, body


def cql_string(text):
    data = text.encode()
    return struct.pack(">h", len(data)) + data


def probe_cql(host, port, user=None, password=None):
    with socket.create_connection((host, port), timeout=TIMEOUT) as sock:
        sock.settimeout(TIMEOUT)
        opcode, body = cql_call(sock, 1, 0x05, b"")  # OPTIONS
        if opcode != 0x06:
            raise ValueError("OPTIONS answered by opcode %#x, not SUPPORTED" % opcode)
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
        # STARTUP: a string map with the CQL version.
        opcode, _ = cql_call(sock, 2, 0x01, struct.pack(">h", 1) + cql_string("CQL_VERSION") + cql_string("3.0.0"))
        login = "no login"
        if opcode == 0x03:  # AUTHENTICATE
            if user is None:
                raise ValueError("the node asks for a login: give USER and PASSWORD")
            token = b"\0" + user.encode() + b"\0" + password.encode()  # SASL PLAIN
            opcode, _ = cql_call(sock, 3, 0x0F, struct.pack(">i", len(token)) + token)  # AUTH_RESPONSE
            if opcode != 0x10:
                raise ValueError("the login was answered by opcode %#x, not AUTH_SUCCESS" % opcode)
            login = "logged in as %s" % user
        elif opcode != 0x02:
            raise ValueError("STARTUP answered by opcode %#x, not READY or AUTHENTICATE" % opcode)
        return "cql %s protocols %s, %s" % (
            ",".join(info.get("CQL_VERSION", [])),
            ",".join(info.get("PROTOCOL_VERSIONS", [])),
            login,
        )


def main():
    kind = sys.argv[1] if len(sys.argv) > 1 else None
    if not (kind == "kafka" and len(sys.argv) == 4 or kind == "cql" and len(sys.argv) in (4, 6)):
        sys.stderr.write(__doc__)
        return 2
    host, port = sys.argv[2], int(sys.argv[3])
    try:
        print(probe_kafka(host, port) if kind == "kafka" else probe_cql(host, port, *sys.argv[4:]))
        return 0
    except Exception as exc:  # any failure means "not answering yet"
        sys.stderr.write("%s %s:%d: %s\n" % (kind, host, port, exc))
        return 1


if __name__ == "__main__":
    sys.exit(main())
