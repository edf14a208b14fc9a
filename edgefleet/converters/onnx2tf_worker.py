"""Converts ONNX to a float32 .tflite with onnx2tf, inside the converter's own environment.

Executed as a script by that environment's interpreter (TensorFlow, numpy < 2), so it
imports nothing from edgefleet. ``edgefleet.converters.onnx2tflite`` writes the request
into a directory and reads the answer back:

    request.json   {"input_shapes": {name: [dims]}}   every dim fixed (batch 1)
    model.onnx     the float model
    -> out/model_float32.tflite   inputs keep ONNX's layout (NCHW stays NCHW)
    -> error.txt   the converter's last error line when it fails
"""

from __future__ import annotations

import json
import os
import sys
import traceback
from pathlib import Path


def main(work: Path) -> None:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    os.environ.setdefault("CUDA_VISIBLE_DEVICES", "-1")
    request = json.loads((work / "request.json").read_text())
    shapes: dict[str, list[int]] = request["input_shapes"]
    import onnx2tf

    try:
        onnx2tf.convert(
            input_onnx_file_path=str(work / "model.onnx"),
            output_folder_path=str(work / "out"),
            overwrite_input_shape=[f"{n}:{','.join(map(str, s))}" for n, s in shapes.items()],
            # The device is fed in the ONNX model's layout: keep it at the boundary.
            keep_shape_absolutely_input_names=list(shapes),
            # SPLIT + CONV_2D + CONCATENATION: grouped CONV_2D needs TFLite >= 2.9 kernels
            # that the legacy runtimes and integer-only accelerators do not have.
            disable_group_convolution=True,
            verbosity="error",
        )
    except BaseException as e:  # onnx2tf raises SystemExit and assorted errors
        last = traceback.format_exception_only(type(e), e)[-1].strip()
        (work / "error.txt").write_text(last)
        raise SystemExit(1) from e


if __name__ == "__main__":
    main(Path(sys.argv[1]))
