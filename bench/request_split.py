"""What the request split of an A/B experiment costs the agent's endpoint, and how exact it is.

Runs the digits model behind the real ``InferenceServer`` on a loopback port, with and
without an experiment's challenger (``edgefleet.agent.inference.split``), and prints the
median and p95 latency of a request from a keep-alive client in each case, then the
share of arm B realised over ``--ids`` request ids for a few shares (the hash alone,
no server).

    python bench/request_split.py [--requests 2000] [--ids 100000]
"""

from __future__ import annotations

import argparse
import http.client
import json
import tempfile
import time
from pathlib import Path

import numpy as np

from edgefleet import schema
from edgefleet.agent.inference.runtime import ActiveModel, ModelHolder, OnnxRuntime
from edgefleet.agent.inference.server import InferenceServer
from edgefleet.agent.inference.split import RequestSplit, request_fraction
from edgefleet.tensors import ModelSignature, encode_tensor
from edgefleet_demo.digits import train_digits_model

SIGNATURE = {
    "inputs": [{"name": "input", "datatype": "FP32", "shape": [-1, 64]}],
    "outputs": [
        {"name": "label", "datatype": "INT64", "shape": [-1]},
        {"name": "probabilities", "datatype": "FP32", "shape": [-1, 10]},
    ],
}


def latencies(port: int, body: dict[str, object], requests: int) -> np.ndarray:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    times = []
    for i in range(requests):
        raw = json.dumps({**body, "id": f"bench-{i}"}).encode()
        started = time.perf_counter()
        connection.request("POST", "/v2/models/digits/infer", body=raw)
        response = connection.getresponse()
        response.read()
        times.append((time.perf_counter() - started) * 1000.0)
        assert response.status == 200
    connection.close()
    return np.array(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--ids", type=int, default=100_000)
    args = parser.parse_args()

    digits = train_digits_model()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "model.onnx"
        path.write_bytes(digits.onnx_bytes)
        signature = schema.convert(SIGNATURE, ModelSignature)
        arm_a = ActiveModel("digits", "1", "onnx", OnnxRuntime(path, signature), "digits-1", 1)
        arm_b = ActiveModel("digits", "2", "onnx", OnnxRuntime(path, signature), "digits-2", 2)
        body = {"inputs": [encode_tensor("input", digits.holdout_x[:1].astype(np.float32))]}
        split = RequestSplit()
        server = InferenceServer(ModelHolder(arm_a), host="127.0.0.1", port=0)
        server.start()
        try:
            latencies(server.port, body, 200)  # warm up
            cases = [("no split hook", None), ("hook, no challenger", 0.0)]
            for label, share in [*cases, ("challenger 50 %", 0.5)]:
                if share is not None:
                    server.choose_arm = split.serve
                    if share > 0:
                        split.start(arm_b, share=share, experiment_id=1)
                times = latencies(server.port, body, args.requests)
                print(
                    f"{label:<22} median {np.median(times):.3f} ms  "
                    f"p95 {np.percentile(times, 95):.3f} ms  ({args.requests} requests)"
                )
        finally:
            server.stop()
    for share in (0.05, 0.2, 0.5):
        on_b = sum(request_fraction(1, f"req-{i}") < share for i in range(args.ids))
        print(f"share {share:.2f}: arm B answered {on_b / args.ids:.4f} of {args.ids} ids")


if __name__ == "__main__":
    main()
