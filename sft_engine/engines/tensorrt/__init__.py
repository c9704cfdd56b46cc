"""The ``tensorrt`` target (``target``) and its internals: the FP16 compile recipe per Torch-TensorRT version
(``fp16_recipe``), ModelOpt INT8/FP8 quantization and plan builds (``modelopt``), the in-process plan runner
(``runtime``), the inspector's precision verdict (``verdict``) and the half-precision export check (``export_check``)."""
