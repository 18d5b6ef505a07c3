"""The int8 contenders: our network quantised from the float32 weights the float contenders open and from the
same calibration images (:meth:`~.models.Models.calibration_images`), each opened through the inference layer.

- ``fast-int8``: :func:`xception.quantize`'s int8 file (:meth:`~.models.Models.int8_files`) on the ``int8``
  runtime;
- ``ort-int8``: the QDQ ONNX model of the same quantised network (the same scales) on ``onnxruntime``; with
  ``activation_bits=7`` (which ONNX cannot express) the same calibration quantised with 8-bit activations;
- ``ov-int8``: OpenVINO's own int8 path, NNCF post-training quantisation of our float32 ONNX export on the
  calibration images, on ``openvino``; where NNCF is missing or fails, the QDQ model compiled by OpenVINO;
  when both fail, a skip whose reason says why each did. The row's kernels say which path ran.

Their ratios are only taken against each other (the report compares equal precisions only).
"""

from __future__ import annotations

from ..errors import ConfigError
from .base import BuildContext, Contender, Skip, runner_details
from .builders import ort_contender, ov_contender


def _one_line(err: BaseException) -> str:
    first = (str(err).strip().splitlines() or [""])[0][:160]
    return f"{type(err).__name__}: {first}" if first else type(err).__name__


def fast_int8(ctx: BuildContext) -> Contender:
    """:func:`xception.quantize`'s int8 file of our weights, on the ``int8`` runtime."""
    files = ctx.models.int8_files()
    runner = ctx.open(files.int8, "int8")
    x = ctx.x.float().cpu()
    return Contender(lambda: runner.forward(x), x.shape[0],
                     details=runner_details(runner, model=ctx.cfg.model, **files.details()))


def ort_int8(ctx: BuildContext) -> Contender:
    """The QDQ ONNX model of the same quantised network, on ONNX Runtime (Q/DQ fused into its int8 kernels)."""
    files = ctx.models.int8_files()
    return ort_contender(ctx, files.qdq, model=ctx.cfg.model, **files.details(qdq=True))


def _nncf_ptq(ctx: BuildContext) -> Contender:
    """NNCF's post-training quantisation of our float32 ONNX export on the calibration images, on OpenVINO."""
    try:
        import nncf  # noqa: F401  (checked before the float32 export, which only this path needs)
    except ImportError as err:
        raise ConfigError("nncf is not installed (pip install nncf)") from err
    images = ctx.models.calibration_images()
    path, export_s = ctx.models.onnx_file("ours")
    return ov_contender(ctx, path, nncf_images=images, model=ctx.cfg.model, export_s=round(export_s, 2),
                        int8_path="NNCF PTQ", calibration={"method": "NNCF defaults", "images": len(images)})


def ov_int8(ctx: BuildContext) -> Contender:
    """OpenVINO int8: NNCF PTQ of the float32 export on the calibration images, else the QDQ model (see the
    module's docstring)."""
    try:
        return _nncf_ptq(ctx)
    except Exception as err:  # NNCF missing or failing: OpenVINO's other int8 path
        nncf_failure = f"NNCF PTQ: {_one_line(err)}"
    try:
        files = ctx.models.int8_files()
        return ov_contender(ctx, files.qdq, model=ctx.cfg.model, int8_path="QDQ model", nncf_failed=nncf_failure,
                            **files.details(qdq=True))
    except Exception as err:
        raise Skip(f"no int8 path of OpenVINO ran: {nncf_failure}; QDQ model: {_one_line(err)}") from err
