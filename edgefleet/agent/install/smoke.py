"""The post-install smoke test: the new model must reproduce the bundle's expected outputs.

It runs on the device's own runtime, so it catches what signatures cannot: a model
that loads but computes something else here (wrong build, runtime drift, bad
quantization for this hardware).
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from edgefleet.agent.errors import SmokeTestError
from edgefleet.agent.inference.runtime import ModelRuntime
from edgefleet.bundle import Manifest, SmokeTest

logger = logging.getLogger(__name__)


def load_array(path: Path) -> np.ndarray:
    """Load one ``.npy`` vector without ever unpickling objects."""
    try:
        return np.asarray(np.load(path, allow_pickle=False))
    except (OSError, ValueError) as e:
        raise SmokeTestError(f"cannot read smoke-test file {path.name}: {e}") from e


def compare_output(name: str, actual: np.ndarray, expected: np.ndarray, test: SmokeTest) -> None:
    """Raise ``SmokeTestError`` naming ``name`` when ``actual`` is not close enough."""
    if actual.shape != expected.shape:
        raise SmokeTestError(
            f"smoke test output {name!r}: shape {list(actual.shape)} "
            f"!= expected {list(expected.shape)}",
            output=name,
        )
    if np.issubdtype(expected.dtype, np.floating) or np.issubdtype(actual.dtype, np.floating):
        a = actual.astype(np.float64)
        e = expected.astype(np.float64)
        if not np.allclose(a, e, atol=test.atol, rtol=test.rtol, equal_nan=False):
            worst = float(np.max(np.abs(a - e))) if a.size else 0.0
            raise SmokeTestError(
                f"smoke test output {name!r} differs from expected: max abs diff {worst:.3g} "
                f"exceeds atol={test.atol} rtol={test.rtol}",
                output=name,
            )
        return
    agreement = float(np.mean(actual == expected)) if expected.size else 1.0
    if agreement < test.min_agreement:
        raise SmokeTestError(
            f"smoke test output {name!r}: {agreement:.1%} of values agree, "
            f"need {test.min_agreement:.1%}",
            output=name,
        )


def run_smoke_test(runtime: ModelRuntime, manifest: Manifest, slot_dir: Path) -> None:
    """Run the manifest's smoke test on ``runtime``; no smoke test means nothing to check."""
    test = manifest.smoke_test
    if test is None:
        logger.warning("bundle has no smoke test bundle_id=%s", manifest.bundle_id)
        return
    feeds = {name: load_array(Path(slot_dir) / file) for name, file in test.inputs.items()}
    try:
        outputs = runtime.infer(feeds)
    except Exception as e:  # any runtime failure on the smoke inputs is a failed test
        raise SmokeTestError(f"smoke test inference failed: {e}") from e
    for name, file in sorted(test.expected.items()):
        if name not in outputs:
            raise SmokeTestError(f"smoke test output {name!r} not produced", output=name)
        compare_output(name, np.asarray(outputs[name]), load_array(Path(slot_dir) / file), test)
    logger.info("smoke test passed bundle_id=%s outputs=%d", manifest.bundle_id, len(outputs))
