"""The ``cpu`` target: engines behind Triton's Python backend (``target``), the CPU's INT8 and bf16 arithmetic
(``isa``), the INT8 quantizers (``quantize``) and the Python-backend ``model.py`` (``serving_model``)."""
