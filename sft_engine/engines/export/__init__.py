"""Exporters: an eager model → an engine file, one module per format (``onnx``, ``torchscript``, ``openvino``).

Targets compose them (the CPU target uses all three, ``onnx`` and the quantized
``tensorrt`` plans start from the ONNX export); an exporter knows nothing of a target.
"""
