"""The local OIP endpoint's own cost per request, against a do-nothing server.

The agent side of this process serves two ONNX models through ``InferenceServer``
(``sum1k``: 256 FP32 in, ``sum1m``: 262,144 FP32 in, both summed to one number), on
TCP and on a Unix socket, next to a do-nothing server on TCP and on a Unix socket that
reads each request by its ``Content-Length`` and answers a fixed small JSON body.

A client in a process of its own (as an application on the device would be) holds one
keep-alive ``http.client`` connection per server and sends the same bytes to both:
each case is timed in rounds, the endpoint and the do-nothing server alternating, and
the agent's own cost is the median over rounds of (endpoint - do-nothing). What remains
in it: parsing the request, checking and decoding the tensors, the model call
(a sum: a few µs for 1 KB), encoding the answer.

    .venv/bin/python bench/agent_runtime.py --endpoint
"""

from __future__ import annotations

import http.client
import json
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from edgefleet import schema
from edgefleet.agent.inference.binary import HEADER
from edgefleet.agent.inference.runtime import ActiveModel, ModelTable, OnnxRuntime
from edgefleet.agent.inference.server import InferenceServer
from edgefleet.tensors import ModelSignature, encode_tensor

SIZES = {"1 KB": ("sum1k", 256), "1 MB": ("sum1m", 262_144)}
CALLS = {"1 KB": 100, "1 MB": 6}
JSON_1MB_CALLS = 1
ROUNDS = 31
NOTHING_ANSWER = b'{"model_name":"m","model_version":"1","outputs":[]}'


def per_call_us(fn: Callable[[], object], calls: int) -> float:
    started = time.perf_counter()
    for _ in range(calls):
        fn()
    return (time.perf_counter() - started) / calls * 1e6


def sum_model(path: Path, width: int) -> bytes:
    """An ONNX model summing each row of a [-1, width] FP32 input."""
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("ReduceSum", ["x", "axes"], ["s"], keepdims=1)],
        "sum",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", width])],
        [helper.make_tensor_value_info("s", TensorProto.FLOAT, ["N", 1])],
        [helper.make_tensor("axes", TensorProto.INT64, [1], [1])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    data = model.SerializeToString()
    onnx.checker.check_model(model)
    path.write_bytes(data)
    return data


def serve_nothing(listener: socket.socket) -> None:
    """Answer every request on ``listener`` with ``NOTHING_ANSWER``, reading its body."""
    response = (
        b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: "
        + str(len(NOTHING_ANSWER)).encode()
        + b"\r\n\r\n"
        + NOTHING_ANSWER
    )

    def connection(conn: socket.socket) -> None:
        if conn.family == socket.AF_INET:
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        stream = conn.makefile("rb")
        while True:
            length = 0
            while True:
                line = stream.readline(65537)
                if not line:
                    return
                if line in (b"\r\n", b"\n"):
                    break
                if line[:15].lower() == b"content-length:":
                    length = int(line[15:])
            stream.read(length)
            conn.sendall(response)

    def accept() -> None:
        while True:
            conn, _ = listener.accept()
            threading.Thread(target=connection, args=(conn,), daemon=True).start()

    threading.Thread(target=accept, daemon=True).start()


class UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: str) -> None:
        super().__init__("localhost", timeout=60)
        self.path = path

    def connect(self) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.connect(self.path)


def bodies(name: str, width: int) -> dict[str, tuple[bytes, dict[str, str]]]:
    """The JSON and the binary request for one all-ones row of ``width`` FP32."""
    x = np.ones((1, width), np.float32)
    as_json = json.dumps({"inputs": [encode_tensor("x", x)]}).encode()
    header = json.dumps(
        {
            "inputs": [
                {
                    "name": "x",
                    "datatype": "FP32",
                    "shape": [1, width],
                    "parameters": {"binary_data_size": x.nbytes},
                }
            ],
            "parameters": {"binary_data_output": True},
        }
    ).encode()
    return {
        "JSON": (as_json, {"Content-Type": "application/json"}),
        "binary": (header + x.tobytes(), {HEADER: str(len(header))}),
    }


def client(addresses: dict[str, Any]) -> dict[str, list[float]]:
    """Run in a separate process: µs per request of every case, per round."""

    def connect(where: Any) -> http.client.HTTPConnection:
        if isinstance(where, str):
            return UnixConnection(where)
        return http.client.HTTPConnection("127.0.0.1", where, timeout=60)

    connections = {key: connect(where) for key, where in addresses.items()}
    cases = []
    for size, (model, width) in SIZES.items():
        for encoding, (body, headers) in bodies(model, width).items():
            calls = JSON_1MB_CALLS if (size, encoding) == ("1 MB", "JSON") else CALLS[size]
            for transport in ("TCP", "Unix"):
                cases.append((size, encoding, transport, model, body, headers, calls))

    def timed(
        conn: http.client.HTTPConnection,
        path: str,
        body: bytes,
        headers: dict[str, str],
        calls: int,
    ) -> float:
        started = time.perf_counter()
        for _ in range(calls):
            conn.request("POST", path, body, headers)
            response = conn.getresponse()
            response.read()
            if response.status != 200:
                raise RuntimeError(f"{path}: {response.status}")
        return (time.perf_counter() - started) / calls * 1e6

    timings: dict[str, list[float]] = {}
    for round_ in range(ROUNDS + 1):  # the first round warms up and is dropped
        for size, encoding, transport, model, body, headers, calls in cases:
            key = f"{size}|{encoding}|{transport}"
            path = f"/v2/models/{model}/infer"
            agent = timed(connections[f"agent {transport}"], path, body, headers, calls)
            nothing = timed(connections[f"nothing {transport}"], path, body, headers, calls)
            if round_:
                timings.setdefault(key + "|agent", []).append(agent)
                timings.setdefault(key + "|nothing", []).append(nothing)
    return timings


def bench_endpoint() -> list[dict[str, Any]]:
    """One row per (input size, encoding, transport): µs per request of the endpoint,
    of the do-nothing server, and the agent's own cost (their difference)."""
    with tempfile.TemporaryDirectory() as name:
        tmp = Path(name)
        table = ModelTable()
        model_us: dict[str, float] = {}
        for size, (model_name, width) in SIZES.items():
            path = tmp / f"{model_name}.onnx"
            sum_model(path, width)
            signature = schema.convert(
                {
                    "inputs": [{"name": "x", "datatype": "FP32", "shape": [-1, width]}],
                    "outputs": [{"name": "s", "datatype": "FP32", "shape": [-1, 1]}],
                },
                ModelSignature,
            )
            runtime = OnnxRuntime(path, signature)
            table.holder(model_name).swap(
                ActiveModel(model_name, "1", "onnxruntime_onnx", runtime, "b", 1)
            )
            feeds = {"x": np.ones((1, width), np.float32)}
            model_us[size] = statistics.median(
                per_call_us(lambda runtime=runtime, feeds=feeds: runtime.infer(feeds), 50)
                for _ in range(11)
            )
        server = InferenceServer(
            table, port=0, max_body_bytes=64 << 20, unix_socket=tmp / "agent.sock"
        )
        server.start()
        nothing_tcp = socket.create_server(("127.0.0.1", 0))
        nothing_unix = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        nothing_unix.bind(str(tmp / "nothing.sock"))
        nothing_unix.listen()
        serve_nothing(nothing_tcp)
        serve_nothing(nothing_unix)
        addresses = {
            "agent TCP": server.port,
            "agent Unix": str(server.unix_socket),
            "nothing TCP": nothing_tcp.getsockname()[1],
            "nothing Unix": str(tmp / "nothing.sock"),
        }
        try:
            out = subprocess.run(
                [sys.executable, __file__, "--client", json.dumps(addresses)],
                capture_output=True,
                text=True,
                check=True,
            )
        finally:
            server.stop()
    timings = json.loads(out.stdout)
    rows = []
    for key in dict.fromkeys(k.rsplit("|", 1)[0] for k in timings):
        agent, nothing = timings[key + "|agent"], timings[key + "|nothing"]
        size, encoding, transport = key.split("|")
        rows.append(
            {
                "input": size,
                "encoding": encoding,
                "transport": transport,
                "endpoint_us": statistics.median(agent),
                "nothing_us": statistics.median(nothing),
                "own_us": statistics.median(a - n for a, n in zip(agent, nothing, strict=True)),
                "best_own_us": min(agent) - min(nothing),
                "model_us": model_us[size],
            }
        )
    return rows


def print_endpoint_table(rows: list[dict[str, Any]]) -> None:
    print(
        f"local OIP endpoint, keep-alive http.client in its own process, median of {ROUNDS} rounds"
    )
    columns = (
        "input",
        "tensors",
        "transport",
        "endpoint µs/req",
        "do-nothing server µs/req",
        "agent's own cost µs/req (median of rounds)",
        "(best round)",
        "of which the model call",
    )
    print("| " + " | ".join(columns) + " |")
    print("|---|---|---|---:|---:|---:|---:|---:|")
    for row in rows:
        print(
            f"| {row['input']} | {row['encoding']} | {row['transport']} | "
            f"{row['endpoint_us']:,.0f} | {row['nothing_us']:,.0f} | {row['own_us']:,.0f} | "
            f"{row['best_own_us']:,.0f} | {row['model_us']:,.0f} |"
        )


if __name__ == "__main__":
    if sys.argv[1:2] == ["--client"]:
        print(json.dumps(client(json.loads(sys.argv[2]))))
    else:
        print_endpoint_table(bench_endpoint())
