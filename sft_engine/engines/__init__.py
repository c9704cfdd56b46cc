"""Engine exporters, laid out by kind, and the two tables that list targets (``registry``) and precisions (``precision``).

``export/`` holds the exporters (ONNX, TorchScript, OpenVINO); ``cpu/``, ``gpu/`` and
``tensorrt/`` the targets and their internals; ``onnx`` the target for the NGC
container's ONNX Runtime backend; ``calibration`` which labelled images calibrate and
which gate a quantized engine. Each target module defines ``TARGET``: the candidates
it plans (engine × precision), the precisions it takes, and how it exports one into
files, a runner and the engine half of its config (``base``). Judging them (parity,
precision gates, timing) is the build's job, once for every target (``sft_engine.build``).
"""
