"""The fleet simulator for 10,000 devices: real MQTT sessions on asyncio, a few per process.

``bench/fleetsim.py`` composes each simulated device from the agent's own parts: a paho
client with its network thread, an offer worker thread, python-tuf. That is the most
faithful device, and it stops at a few thousand on 2 cores: three threads per device,
and paho's ``select()`` loop cannot watch a socket numbered past 1,024, so a process
holds at most ~290 devices. ``--sim async`` (this module) runs each device as an
asyncio task with one TCP connection speaking MQTT 5 itself (``MqttConnection``:
CONNECT with a last will, SUBSCRIBE, UNSUBSCRIBE, PUBLISH at QoS 0 and 1, PUBACK,
PINGREQ), so a process holds thousands, each with its own client id, session, last will
and retained status, as a real agent has.

What a device does with an offer, the control plane and broker unchanged:

1. reports ``downloading``;
2. reads the TUF metadata the control plane published retained
   (``fleet/all/down/meta/index``, then ``timestamp.json``, the snapshot it names, the
   targets the snapshot names), each file checked against the SHA-256 the index gives;
3. takes the offered target's length and SHA-256 from the signed targets metadata;
4. takes every byte of the target from the broker's retained blob chunks
   (``[fetch] blob_window`` subscriptions open at once, as the agent does), hashes them
   and checks length and SHA-256 against the signed metadata;
5. reports ``verified``, then ``active`` with its install time, and updates its
   retained status to the new bundle.

Left out, and said beside every figure: the signature checks of the metadata (the same
bytes for every device, verified by python-tuf on a real device's own CPU; the thread
simulator does them), unpacking, the model load and the smoke test, and the
request/response fallback (this simulator needs the retained path: a file or chunk not
retained fails the install with the reason, so the benchmark shows it).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import random
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from typing import Any

from fleetsim import DeviceRecord, WorkerSpec

from edgefleet import topics
from edgefleet.agent.telemetry.counters import LatencyWindow, inference_event
from edgefleet.errors import MessageError
from edgefleet.messages import (
    BlobIndex,
    BundleOffer,
    DeviceStatus,
    InstallReport,
    MetaIndex,
    decode_as,
)
from edgefleet.mqtt import BrokerAddress

logger = logging.getLogger(__name__)

KEEPALIVE_S = 60
CONNECT_TIMEOUT_S = 300.0
CONNECTS_AT_ONCE = 64  # per process: a burst of 2,500 SYNs overflows the broker's backlog
RETAINED_GRACE_S = 10.0  # after the SUBACK, for a retained message (a loaded broker)
ACK_TIMEOUT_S = 60.0
RECONNECT_S = (1.0, 5.0)

CONNECT, CONNACK, PUBLISH, PUBACK = 1, 2, 3, 4
SUBSCRIBE, SUBACK, UNSUBSCRIBE, UNSUBACK = 8, 9, 10, 11
PINGREQ, PINGRESP, DISCONNECT = 12, 13, 14


# -- MQTT 5, the part a device uses ----------------------------------------------------


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n % 128, n // 128
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _str(text: str) -> bytes:
    data = text.encode()
    return struct.pack("!H", len(data)) + data


def _bin(data: bytes) -> bytes:
    return struct.pack("!H", len(data)) + data


def _packet(kind: int, flags: int, body: bytes) -> bytes:
    return bytes([kind << 4 | flags]) + _varint(len(body)) + body


def _skip_properties(body: bytes, at: int) -> int:
    length, shift = 0, 0
    while True:
        byte = body[at]
        at += 1
        length |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            return at + length


class MqttError(Exception):
    """The connection failed or the broker refused."""


class MqttConnection:
    """One MQTT 5 client session over one TCP connection, driven by the event loop.

    ``on_message(topic, payload)`` is called for every PUBLISH (QoS 1 is acknowledged
    after it returns). Subscribe, unsubscribe and QoS 1 publish wait for their ack.
    """

    def __init__(self, client_id: str, on_message: Callable[[str, bytes], None]) -> None:
        self.client_id = client_id
        self.on_message = on_message
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._next_id = 0
        self._acks: dict[tuple[int, int], asyncio.Future[bytes]] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self.closed: asyncio.Event = asyncio.Event()
        self.bytes_in = 0

    async def connect(self, broker: BrokerAddress, *, will: tuple[str, bytes] | None) -> None:
        reader, writer = await asyncio.open_connection(broker.host, broker.port)
        sock = writer.get_extra_info("socket")
        if sock is not None:
            import socket

            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        flags = 0x02  # clean start: offers come again with the device's next status
        payload = _str(self.client_id)
        if will is not None:
            flags |= 0x04 | 0x08 | 0x20  # will, QoS 1, retained
            payload += b"\x00" + _str(will[0]) + _bin(will[1])
        body = _str("MQTT") + bytes([5, flags]) + struct.pack("!H", KEEPALIVE_S) + b"\x00"
        writer.write(_packet(CONNECT, 0, body + payload))
        kind, _, rest = await self._read(reader)
        if kind != CONNACK or len(rest) < 2 or rest[1] != 0:
            writer.close()
            raise MqttError(f"connect refused: {rest[1:2].hex() if len(rest) > 1 else 'short'}")
        self._reader, self._writer = reader, writer
        self.closed.clear()
        self._tasks = [
            asyncio.create_task(self._read_loop()),
            asyncio.create_task(self._ping_loop()),
        ]

    async def close(self) -> None:
        if self._writer is not None and not self._writer.is_closing():
            with contextlib.suppress(OSError, RuntimeError):
                self._writer.write(_packet(DISCONNECT, 0, b""))
                await self._writer.drain()
                self._writer.close()
        for task in self._tasks:
            task.cancel()
        self.closed.set()

    async def subscribe(self, topic: str, qos: int = 1) -> None:
        pid = self._id()
        body = struct.pack("!H", pid) + b"\x00" + _str(topic) + bytes([qos])
        await self._call(SUBACK, pid, _packet(SUBSCRIBE, 0x02, body))

    async def unsubscribe(self, topic: str) -> None:
        pid = self._id()
        body = struct.pack("!H", pid) + b"\x00" + _str(topic)
        await self._call(UNSUBACK, pid, _packet(UNSUBSCRIBE, 0x02, body))

    async def publish(
        self, topic: str, payload: bytes, *, qos: int = 1, retain: bool = False
    ) -> None:
        flags = (qos << 1) | (1 if retain else 0)
        if qos == 0:
            self._send(_packet(PUBLISH, flags, _str(topic) + b"\x00" + payload))
            return
        pid = self._id()
        body = _str(topic) + struct.pack("!H", pid) + b"\x00" + payload
        await self._call(PUBACK, pid, _packet(PUBLISH, flags, body))

    # -- internals ---------------------------------------------------------------------

    def _id(self) -> int:
        self._next_id = self._next_id % 65535 + 1
        return self._next_id

    def _send(self, data: bytes) -> None:
        if self._writer is None or self._writer.is_closing():
            raise MqttError("not connected")
        self._writer.write(data)

    async def _call(self, kind: int, pid: int, packet: bytes) -> bytes:
        future: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
        self._acks[(kind, pid)] = future
        try:
            self._send(packet)
            done, _ = await asyncio.wait(
                [future, asyncio.ensure_future(self.closed.wait())],
                timeout=ACK_TIMEOUT_S,
                return_when=asyncio.FIRST_COMPLETED,
            )
            if future not in done:
                raise MqttError("no acknowledgement" if not self.closed.is_set() else "closed")
            return future.result()
        finally:
            self._acks.pop((kind, pid), None)

    async def _read(self, reader: asyncio.StreamReader) -> tuple[int, int, bytes]:
        first = await reader.readexactly(1)
        length, shift = 0, 0
        while True:
            byte = (await reader.readexactly(1))[0]
            length |= (byte & 0x7F) << shift
            shift += 7
            if not byte & 0x80:
                break
        body = await reader.readexactly(length) if length else b""
        self.bytes_in += 2 + length
        return first[0] >> 4, first[0] & 0x0F, body

    async def _read_loop(self) -> None:
        assert self._reader is not None
        try:
            while True:
                kind, flags, body = await self._read(self._reader)
                if kind == PUBLISH:
                    self._on_publish(flags, body)
                elif kind in (PUBACK, SUBACK, UNSUBACK):
                    (pid,) = struct.unpack_from("!H", body)
                    future = self._acks.get((kind, pid))
                    if future is not None and not future.done():
                        future.set_result(body)
        except (asyncio.IncompleteReadError, ConnectionError, OSError):
            pass
        finally:
            self.closed.set()

    def _on_publish(self, flags: int, body: bytes) -> None:
        qos = (flags >> 1) & 3
        (length,) = struct.unpack_from("!H", body)
        topic = body[2 : 2 + length].decode()
        at = 2 + length
        pid = None
        if qos:
            (pid,) = struct.unpack_from("!H", body, at)
            at += 2
        at = _skip_properties(body, at)
        try:
            self.on_message(topic, body[at:])
        finally:
            if pid is not None:
                with contextlib.suppress(MqttError):
                    self._send(_packet(PUBACK, 0, struct.pack("!H", pid)))

    async def _ping_loop(self) -> None:
        while not self.closed.is_set():
            await asyncio.sleep(KEEPALIVE_S / 2)
            with contextlib.suppress(MqttError):
                self._send(_packet(PINGREQ, 0, b""))


# -- one device ----------------------------------------------------------------------


class InstallRefused(Exception):
    """The install cannot go on; the reason is reported as ``failed``."""


@dataclass
class AsyncDevice:
    """A device: its session, its retained status, and what an offer makes it do."""

    device_id: str
    profile: str
    broker: BrokerAddress
    window: int
    record: DeviceRecord
    bundle_id: str | None = None
    release: int | None = None
    reconnects: int = 0
    _mqtt: MqttConnection | None = None
    _waiting: dict[str, asyncio.Queue[bytes]] = field(default_factory=dict)
    _offers: asyncio.Queue[BundleOffer] = field(default_factory=asyncio.Queue)
    _tasks: list[asyncio.Task[None]] = field(default_factory=list)
    connected: asyncio.Event = field(default_factory=asyncio.Event)
    stopping: bool = False

    def status(self, online: bool) -> bytes:
        return DeviceStatus(
            online=online, profile=self.profile, agent_version="fleetsim-async",
            bundle_id=self.bundle_id, release=self.release,
        ).to_bytes()  # fmt: skip

    async def start(self, gate: asyncio.Semaphore) -> None:
        self._tasks.append(asyncio.create_task(self._session(gate)))
        self._tasks.append(asyncio.create_task(self._work()))

    async def _session(self, gate: asyncio.Semaphore) -> None:
        """Connect, subscribe, say online; again after a drop, with a random back-off."""
        while not self.stopping:
            mqtt = MqttConnection(self.device_id, self._on_message)
            try:
                async with gate:
                    await mqtt.connect(
                        self.broker, will=(topics.up(self.device_id, topics.Up.STATUS),
                                           self.status(False)),
                    )  # fmt: skip
                    self._mqtt = mqtt
                    await mqtt.subscribe(topics.down(self.device_id, topics.Down.OFFER))
                    await mqtt.publish(
                        topics.up(self.device_id, topics.Up.STATUS), self.status(True), retain=True
                    )
                self.connected.set()
                await mqtt.closed.wait()
            except (OSError, MqttError, asyncio.IncompleteReadError) as e:
                logger.warning("mqtt connect failed device_id=%s reason=%s", self.device_id, e)
            self.connected.clear()
            if self.stopping:
                return
            self.reconnects += 1
            logger.warning("mqtt disconnected device_id=%s", self.device_id)
            await asyncio.sleep(random.uniform(*RECONNECT_S))

    def _on_message(self, topic: str, payload: bytes) -> None:
        if topic == topics.down(self.device_id, topics.Down.OFFER):
            try:
                offer = decode_as(payload, BundleOffer, topic=topic)
            except MessageError as e:
                logger.warning("offer refused device_id=%s reason=%s", self.device_id, e.reason)
                return
            self._offers.put_nowait(offer)
            return
        waiting = self._waiting.get(topic)
        if waiting is not None and payload:
            waiting.put_nowait(payload)

    async def _work(self) -> None:
        while True:
            offer = await self._offers.get()
            if offer.bundle_id == self.bundle_id:
                await self._report(offer, "active", install_seconds=0.0)
                continue
            self.record.offered_at = time.time()
            started = time.monotonic()
            try:
                await self._report(offer, "downloading")
                await self._install(offer)
            except (TimeoutError, InstallRefused, MqttError, OSError) as e:
                reason = str(e) or type(e).__name__
                self.record.failure = reason
                logger.warning("install failed device_id=%s reason=%s", self.device_id, reason)
                with contextlib.suppress(MqttError, OSError):
                    await self._report(offer, "failed", reason=reason)
                continue
            self.bundle_id, self.release = offer.bundle_id, offer.release
            self.record.installed_bundle = offer.bundle_id
            seconds = time.monotonic() - started
            self.record.active_at = time.time()
            self.record.install_seconds = seconds
            await self._report(offer, "active", install_seconds=seconds)
            mqtt = self._connection()
            await mqtt.publish(
                topics.up(self.device_id, topics.Up.STATUS), self.status(True), retain=True
            )

    def _connection(self) -> MqttConnection:
        if self._mqtt is None or self._mqtt.closed.is_set():
            raise MqttError("not connected")
        return self._mqtt

    async def _report(self, offer: BundleOffer, state: Any, *, reason: str | None = None,
                      install_seconds: float | None = None) -> None:  # fmt: skip
        self.record.states.append(str(state))
        report = InstallReport(
            bundle_id=offer.bundle_id, release=offer.release, rollout_id=offer.rollout_id,
            state=state, reason=reason, install_seconds=install_seconds,
        )  # fmt: skip
        await self._connection().publish(
            topics.up(self.device_id, topics.Up.REPORT), report.to_bytes()
        )

    async def _install(self, offer: BundleOffer) -> None:
        index = decode_as(await self._retained(topics.meta_index(), "metadata index"), MetaIndex)
        timestamp = await self._meta(index, "timestamp.json")
        snapshot = await self._meta(index, _named(timestamp, "snapshot.json"))
        targets = await self._meta(index, _named(snapshot, "targets.json"))
        try:
            signed = json.loads(targets)["signed"]["targets"][offer.target]
            length, sha = int(signed["length"]), str(signed["hashes"]["sha256"])
        except (KeyError, TypeError, ValueError) as e:
            raise InstallRefused(f"target {offer.target} not in the signed metadata") from e
        blob = decode_as(
            await self._retained(topics.blob_index(sha), f"blob index of {offer.target}"),
            BlobIndex,
        )
        if blob.size != length:
            raise InstallRefused("blob index size differs from the signed length")
        digest = hashlib.sha256()
        got = 0
        pending: dict[int, asyncio.Task[bytes]] = {}
        for n in range(blob.chunks):
            for m in range(n, min(n + self.window, blob.chunks)):
                if m not in pending:
                    pending[m] = asyncio.create_task(
                        self._retained(topics.blob_chunk(sha, m), f"chunk {m}")
                    )
            data = await pending.pop(n)
            digest.update(data)
            got += len(data)
        if got != length or digest.hexdigest() != sha:
            raise InstallRefused(f"target {offer.target} failed its length or SHA-256 check")
        await self._report(offer, "verified")

    async def _meta(self, index: MetaIndex, name: str) -> bytes:
        expected = index.files.get(name)
        if expected is None:
            raise InstallRefused(f"metadata {name} is not published retained")
        data = await self._retained(topics.meta_file(name), name)
        if hashlib.sha256(data).hexdigest() != expected:
            raise InstallRefused(f"metadata {name} is not the indexed one")
        return data

    async def _retained(self, topic: str, what: str) -> bytes:
        """The retained message on ``topic`` (subscribe, take it, unsubscribe)."""
        mqtt = self._connection()
        queue: asyncio.Queue[bytes] = asyncio.Queue()
        self._waiting[topic] = queue
        try:
            await mqtt.subscribe(topic)
            try:
                return await asyncio.wait_for(queue.get(), RETAINED_GRACE_S)
            except TimeoutError:
                raise InstallRefused(f"no retained {what} (no blob index)") from None
        finally:
            self._waiting.pop(topic, None)
            with contextlib.suppress(MqttError):
                await mqtt.unsubscribe(topic)

    async def stop(self) -> None:
        self.stopping = True
        mqtt = self._mqtt
        if mqtt is not None and not mqtt.closed.is_set():
            with contextlib.suppress(MqttError, OSError, asyncio.TimeoutError):
                await asyncio.wait_for(
                    mqtt.publish(
                        topics.up(self.device_id, topics.Up.STATUS),
                        self.status(False),
                        retain=True,
                    ),
                    10,
                )
            await mqtt.close()
        for task in self._tasks:
            task.cancel()


def _named(document: bytes, role: str) -> str:
    """The versioned file name a timestamp or snapshot names for ``role``."""
    try:
        version = int(json.loads(document)["signed"]["meta"][role]["version"])
    except (KeyError, TypeError, ValueError) as e:
        raise InstallRefused(f"metadata does not name {role}") from e
    return f"{version}.{role}"


# -- the worker process --------------------------------------------------------------


class AsyncWorker:
    """The thread simulator's ``Worker`` commands, on one event loop."""

    def __init__(self, spec: WorkerSpec) -> None:
        self.spec = spec
        self.broker = BrokerAddress.parse(spec.broker_url)
        self.devices: list[AsyncDevice] = []
        self.gate = asyncio.Semaphore(CONNECTS_AT_ONCE)
        self.fanout: list[tuple[MqttConnection, dict[str, Any]]] = []

    async def start_devices(self) -> dict[str, Any]:
        started = time.monotonic()
        for device_id in self.spec.device_ids:
            device = AsyncDevice(device_id, self.spec.profile, self.broker,
                                 self.spec.fetch.blob_window, DeviceRecord(device_id))  # fmt: skip
            self.devices.append(device)
            await device.start(self.gate)
        connected = 0
        deadline = time.monotonic() + CONNECT_TIMEOUT_S
        for device in self.devices:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(
                    device.connected.wait(), max(0.01, deadline - time.monotonic())
                )
                connected += 1
        return {"connected": connected, "seconds": time.monotonic() - started}

    async def fanout_subscribe(self, topic: str, chunks: int, count: int) -> dict[str, Any]:
        async def one(i: int) -> None:
            state: dict[str, Any] = {"received": 0, "bytes": 0, "done_at": None}

            def on_message(_topic: str, payload: bytes) -> None:
                state["received"] += 1
                state["bytes"] += len(payload)
                if state["received"] == chunks:
                    state["done_at"] = time.monotonic()

            mqtt = MqttConnection(f"bench-fan-{self.spec.index}-{i}", on_message)
            async with self.gate:
                await mqtt.connect(self.broker, will=None)
                await mqtt.subscribe(topic)
            self.fanout.append((mqtt, state))

        results = await asyncio.gather(*(one(i) for i in range(count)), return_exceptions=True)
        return {"subscribed": sum(1 for r in results if r is None)}

    async def fanout_wait(self, timeout: float) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and any(s["done_at"] is None for _, s in self.fanout):
            await asyncio.sleep(0.02)
        result = {
            "done_at": [s["done_at"] for _, s in self.fanout if s["done_at"] is not None],
            "incomplete": sum(s["done_at"] is None for _, s in self.fanout),
            "bytes": sum(s["bytes"] for _, s in self.fanout),
        }
        await asyncio.gather(*(m.close() for m, _ in self.fanout))
        self.fanout = []
        return result

    async def telemetry(
        self, events_per_device: int, bundle_id: str, release: int
    ) -> dict[str, Any]:
        window = LatencyWindow()
        for latency in (0.4, 0.6, 0.9, 1.5, 3.0):
            window.add(latency, ok=True)
        started = time.monotonic()

        async def one(device: AsyncDevice) -> int:
            acked = 0
            for _ in range(events_per_device):
                event = inference_event(window, 10.0, bundle_id, release)
                with contextlib.suppress(MqttError, OSError):
                    await device._connection().publish(
                        topics.up(device.device_id, topics.Up.TELEMETRY), event.to_bytes()
                    )
                    acked += 1
            return acked

        acks = await asyncio.gather(*(one(d) for d in self.devices))
        sent = time.monotonic()
        return {
            "started": started,
            "sent": sent,
            "acked_at": time.monotonic(),
            "published": events_per_device * len(self.devices),
            "acked": sum(acks),
        }

    def results(self) -> list[DeviceRecord]:
        return [d.record for d in self.devices]

    async def stop(self) -> None:
        await asyncio.gather(*(d.stop() for d in self.devices), return_exceptions=True)


async def _serve(conn: Connection, spec: WorkerSpec) -> None:
    worker = AsyncWorker(spec)
    loop = asyncio.get_running_loop()
    while True:
        try:
            command, args = await loop.run_in_executor(None, conn.recv)
        except EOFError:
            return
        reply: Any
        try:
            if command == "ping":
                reply = None
            elif command == "start":
                reply = await worker.start_devices()
            elif command == "fanout_subscribe":
                reply = await worker.fanout_subscribe(**args)
            elif command == "fanout_wait":
                reply = await worker.fanout_wait(**args)
            elif command == "telemetry":
                reply = await worker.telemetry(**args)
            elif command == "results":
                reply = worker.results()
            elif command == "stop":
                await worker.stop()
                conn.send(("ok", None))
                return
            else:
                raise ValueError(f"unknown command {command!r}")
        except Exception as e:  # top of the worker's command loop: report, keep serving
            logger.exception("worker command failed command=%s", command)
            conn.send(("error", f"{type(e).__name__}: {e}"))
            continue
        conn.send(("ok", reply))


def run_async_worker(conn: Connection, spec: WorkerSpec) -> None:
    """Entry point of an asyncio worker process: answer commands until ``stop``."""
    logging.basicConfig(
        filename=spec.log_path,
        level=logging.WARNING,
        format="%(asctime)s %(process)d %(name)s %(levelname)s %(message)s",
    )
    try:
        asyncio.run(_serve(conn, spec))
    finally:
        conn.close()
