"""An MQTT 5 client over a plain (or TLS) socket that reports the broker's reason codes.

What a device could try, seen exactly where the broker answers it: the CONNACK
reason code, one SUBACK reason code per filter (0x87 Not authorized, never a grant
followed by silent filtering), the PUBACK reason code of a QoS 1 publish. No client
library retries or hides anything behind it.
"""

from __future__ import annotations

import contextlib
import socket
import ssl
import struct
from dataclasses import dataclass, field

TIMEOUT = 20.0
NOT_AUTHORIZED = 0x87
GRANTED_QOS_1 = 0x01
REFUSED_BEFORE_CONNACK = -1


def _string(value: bytes) -> bytes:
    return struct.pack("!H", len(value)) + value


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        n, digit = divmod(n, 128)
        out.append(digit | (0x80 if n else 0))
        if not n:
            return bytes(out)


@dataclass
class Packet:
    kind: int
    flags: int
    body: bytes


@dataclass
class Mqtt5Probe:
    """One connection; ``connect`` first, then any of the probes, then ``close``."""

    host: str
    port: int
    client_id: str
    username: str | None = None
    password: str | None = None
    context: ssl.SSLContext | None = None
    session_expiry: int = 0
    clean_start: bool = True
    received: list[tuple[str, bytes]] = field(default_factory=list)
    _sock: socket.socket | None = None
    _buffer: bytes = b""
    _next_id: int = 1

    def connect(self) -> int:
        """CONNECT; the CONNACK reason code (0 = success), or ``REFUSED_BEFORE_CONNACK``
        when the broker ended the TLS handshake or the connection instead."""
        try:
            return self._connect()
        except (ssl.SSLError, OSError):
            return REFUSED_BEFORE_CONNACK

    def _connect(self) -> int:
        raw = socket.create_connection((self.host, self.port), timeout=TIMEOUT)
        if self.context is not None:
            raw = self.context.wrap_socket(raw, server_hostname=self.host)
        self._sock = raw
        flags = 0b10 if self.clean_start else 0
        if self.username is not None:
            flags |= 0x80
        if self.password is not None:
            flags |= 0x40
        properties = b""
        if self.session_expiry:
            properties = b"\x11" + struct.pack("!I", self.session_expiry)
        body = _string(b"MQTT") + bytes([5, flags]) + struct.pack("!H", 30)
        body += _varint(len(properties)) + properties
        body += _string(self.client_id.encode())
        if self.username is not None:
            body += _string(self.username.encode())
        if self.password is not None:
            body += _string(self.password.encode())
        self._send(0x10, body)
        connack = self._expect(0x2)
        return connack.body[1]

    def subscribe(self, *filters: str) -> list[int]:
        """SUBSCRIBE (QoS 1) to ``filters`` in one packet; one reason code per filter."""
        packet_id = self._take_id()
        body = struct.pack("!H", packet_id) + _varint(0)
        for topic_filter in filters:
            body += _string(topic_filter.encode()) + b"\x01"
        self._send(0x82, body)
        suback = self._expect(0x9)
        assert struct.unpack("!H", suback.body[:2])[0] == packet_id
        length, used = _read_varint(suback.body, 2)
        return list(suback.body[2 + used + length :])

    def publish(self, topic: str, payload: bytes) -> int:
        """QoS 1 PUBLISH; the PUBACK reason code (0 = success, 0x87 = not authorized)."""
        packet_id = self._take_id()
        body = _string(topic.encode()) + struct.pack("!H", packet_id) + _varint(0) + payload
        self._send(0x32, body)
        puback = self._expect(0x4)
        return puback.body[2] if len(puback.body) > 2 else 0

    def close(self) -> None:
        if self._sock is not None:
            with contextlib.suppress(OSError):
                self._send(0xE0, b"")
            self._sock.close()
            self._sock = None

    # -- wire ----------------------------------------------------------------

    def _take_id(self) -> int:
        packet_id, self._next_id = self._next_id, self._next_id % 65535 + 1
        return packet_id

    def _send(self, first: int, body: bytes) -> None:
        assert self._sock is not None
        self._sock.sendall(bytes([first]) + _varint(len(body)) + body)

    def _expect(self, kind: int) -> Packet:
        """The next packet of ``kind``; PUBLISHes on the way are acknowledged and kept."""
        while True:
            packet = self._read_packet()
            if packet.kind == kind:
                return packet
            if packet.kind == 0x3:
                self._take_publish(packet)
            elif packet.kind == 0xE:
                raise ConnectionError(f"broker sent DISCONNECT {packet.body[:1].hex()}")

    def _take_publish(self, packet: Packet) -> None:
        length = struct.unpack("!H", packet.body[:2])[0]
        topic = packet.body[2 : 2 + length].decode()
        pos = 2 + length
        qos = (packet.flags >> 1) & 0x3
        packet_id = None
        if qos:
            packet_id = struct.unpack("!H", packet.body[pos : pos + 2])[0]
            pos += 2
        props, used = _read_varint(packet.body, pos)
        self.received.append((topic, packet.body[pos + used + props :]))
        if packet_id is not None:
            self._send(0x40, struct.pack("!H", packet_id))

    def _read_packet(self) -> Packet:
        first = self._read(1)[0]
        multiplier, length = 1, 0
        while True:
            digit = self._read(1)[0]
            length += (digit & 0x7F) * multiplier
            multiplier *= 128
            if not digit & 0x80:
                break
        return Packet(first >> 4, first & 0xF, self._read(length))

    def _read(self, n: int) -> bytes:
        assert self._sock is not None
        while len(self._buffer) < n:
            chunk = self._sock.recv(65536)
            if not chunk:
                raise ConnectionError("broker closed the connection")
            self._buffer += chunk
        data, self._buffer = self._buffer[:n], self._buffer[n:]
        return data


def _read_varint(data: bytes, pos: int) -> tuple[int, int]:
    multiplier, value, used = 1, 0, 0
    while True:
        digit = data[pos + used]
        used += 1
        value += (digit & 0x7F) * multiplier
        multiplier *= 128
        if not digit & 0x80:
            return value, used
