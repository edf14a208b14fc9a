"""The model corpus through the real control plane: what each model's build gives and costs.

For every corpus model (tests/support/model_corpus.py: 13 models, three of them pretrained
and read from installed wheels) and every x86-64 profile, one child process starts the
control plane in-process (its API, signed repository and fleet link, on a private
Mosquitto), registers the model and builds its bundle. Per model and profile it reports:
the inputs, the task, every candidate with its verdict, the chosen one, its size and batch-1
latency relative to fp32, the gate's metric against the float model, the build time, and
the build's peak RSS (the child's, including any processes it waited for). A model the
control plane refuses shows the refusal's status and message.

    .venv/bin/python bench/model_corpus.py [--json] [--model NAME ...] [--profile NAME ...]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import resource
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # the corpus lives with the tests' helpers
    sys.path.insert(0, str(ROOT))

from tests.support.model_corpus import CORPUS, X86_PROFILES, CorpusModel  # noqa: E402

GATE_FIELDS = ("agreement", "accuracy", "drop", "worst_class_drop")


def _rss_mb(who: int) -> float:
    return round(resource.getrusage(who).ru_maxrss / 1024, 1)  # KiB on Linux


def describe_inputs(model: CorpusModel) -> list[str]:
    """``name dtype [dims]`` of every input, as the model file declares them."""
    if model.format == "onnx":
        import onnx

        graph = onnx.load_from_string(model.model).graph
        init = {i.name for i in graph.initializer}
        out = []
        for value in graph.input:
            if value.name in init:
                continue
            tensor = value.type.tensor_type
            dims = [
                d.dim_param or (d.dim_value if d.HasField("dim_value") else "?")
                for d in tensor.shape.dim
            ]
            dtype = onnx.helper.tensor_dtype_to_np_dtype(tensor.elem_type).name
            out.append(f"{value.name} {dtype} {dims}")
        return out
    from ai_edge_litert.interpreter import Interpreter

    details = Interpreter(model_content=model.model).get_input_details()
    return [f"{d['name']} {d['dtype'].__name__} {[int(s) for s in d['shape']]}" for d in details]


def run_one(name: str, profile: str, broker_url: str) -> dict[str, Any]:
    """In this (child) process: start the control plane, register ``name``, build it."""
    from edgefleet.control_plane.core.settings import Settings
    from tests.support.control_plane import serve
    from tests.support.corpus_flow import Answer, build, register

    model = CORPUS[name]()
    row: dict[str, Any] = {
        "model": name,
        "profile": profile,
        "source": model.source,
        "inputs": describe_inputs(model),
        "task": model.task_field(),
        "expected": model.expect.get(profile),
    }
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["EDGEFLEET_API_AUTH"] = "false"
        settings = Settings(data_dir=Path(tmp) / "cp", broker_url=broker_url)
        with serve(settings) as api:
            try:
                registered = register(api, model)
            except Exception as e:  # the in-process server's own crash: what a client sees as 500
                registered = Answer(500, f"{type(e).__name__}: {e}")
            if not registered.ok:
                row |= {
                    "stage": "register",
                    "status": registered.status,
                    "refusal": registered.message,
                }
                return row
            baseline = _rss_mb(resource.RUSAGE_SELF)
            start = time.perf_counter()
            try:
                built = build(api, model, profile)
            except Exception as e:  # the in-process server's own crash: what a client sees as 500
                built = Answer(500, f"{type(e).__name__}: {e}")
            row["build_s"] = round(time.perf_counter() - start, 2)
            row["rss_before_mb"] = baseline
            row["rss_peak_mb"] = _rss_mb(resource.RUSAGE_SELF)
            row["rss_children_peak_mb"] = _rss_mb(resource.RUSAGE_CHILDREN)
            if not built.ok:
                row |= {"stage": "build", "status": built.status, "refusal": built.message}
                return row
            row |= {"stage": "built", "status": built.status} | summarise(built.body["manifest"])
    return row


def summarise(manifest: dict[str, Any]) -> dict[str, Any]:
    """Candidates, chosen, size/latency against fp32 and the gate's metric, from a manifest."""
    rows = manifest.get("candidates", [])
    chosen: dict[str, Any] = next((r for r in rows if r.get("chosen")), {})
    fp32 = next((r for r in rows if r.get("precision") == "fp32" and r.get("size_bytes")), None)

    def ratio(field: str) -> float | None:
        if fp32 is None or not fp32.get(field) or chosen.get(field) is None:
            return None
        return round(chosen[field] / fp32[field], 3)

    return {
        "candidates": [
            {"name": r["candidate"], "verdict": r["verdict"], "reasons": r.get("reasons", [])}
            for r in rows
        ],
        "chosen": chosen.get("candidate"),
        "size_bytes": chosen.get("size_bytes"),
        "size_vs_fp32": ratio("size_bytes"),
        "latency_ms": chosen.get("latency_ms"),
        "latency_vs_fp32": ratio("latency_ms"),
        "gate": {k: chosen[k] for k in chosen if k in GATE_FIELDS or "metric" in k},
    }


def _child(name: str, profile: str, broker_url: str) -> dict[str, Any]:
    with tempfile.NamedTemporaryFile(suffix=".json") as out:
        command = [sys.executable, __file__, "--child", name, profile, broker_url, out.name]
        done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            tail = (done.stderr or done.stdout).strip().splitlines()[-3:]
            return {
                "model": name,
                "profile": profile,
                "stage": "crashed",
                "refusal": " | ".join(tail),
            }
        return dict(json.loads(Path(out.name).read_text()))


def _fmt(value: Any, pattern: str = "{}") -> str:
    return "-" if value is None else pattern.format(value)


def print_row(r: dict[str, Any], *, head: bool) -> None:
    """One model and profile; ``head`` first prints the model's name, task and inputs."""
    if head:
        print(f"\n== {r['model']}  task={r.get('task')}  ({r.get('source', '')})")
        for text in r.get("inputs", []):
            print(f"   input {text}")
    lead = f"   {r['profile']:24}"
    if r["stage"] != "built":
        cost = f"; build {r['build_s']} s, peak RSS {r['rss_peak_mb']} MB" if "build_s" in r else ""
        print(f"{lead} REFUSED at {r['stage']} ({r.get('status', '-')}): {r.get('refusal')}{cost}")
        return
    gate = ", ".join(
        f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}" for k, v in r["gate"].items()
    )
    print(
        f"{lead} chosen {r['chosen']}: size x{_fmt(r['size_vs_fp32'])}, latency "
        f"x{_fmt(r['latency_vs_fp32'])} ({_fmt(r['latency_ms'], '{:.4f}')} ms); gate {gate}; "
        f"build {r['build_s']} s; peak RSS {r['rss_peak_mb']} MB "
        f"(from {r['rss_before_mb']} MB; children {r['rss_children_peak_mb']} MB)"
    )
    for c in r["candidates"]:
        print(f"{'':29}{c['name']:34} {c['verdict']:8} {'; '.join(c['reasons'])[:110]}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", action="store_true", help="print the rows as JSON")
    parser.add_argument("--model", action="append", choices=sorted(CORPUS), help="only these")
    parser.add_argument("--profile", action="append", choices=X86_PROFILES, help="only these")
    parser.add_argument("--child", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args()
    logging.basicConfig(level=logging.ERROR)
    warnings.simplefilter("ignore")
    if args.child:
        name, profile, broker_url, out = args.child
        Path(out).write_text(json.dumps(run_one(name, profile, broker_url)))
        return

    from edgefleet.control_plane.broker.mosquitto import MosquittoBroker

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        broker = MosquittoBroker(Path(tmp) / "broker")
        broker.start()
        try:
            for name in args.model or list(CORPUS):
                for index, profile in enumerate(args.profile or X86_PROFILES):
                    rows.append(_child(name, profile, broker.url))
                    if not args.json:
                        print_row(rows[-1], head=index == 0)
        finally:
            broker.kill()
    if args.json:
        print(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
