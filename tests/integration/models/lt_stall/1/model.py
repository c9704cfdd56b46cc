"""Identity model that stalls exactly once, when a flag file asks for it.

Why a file: the test decides *when* the stall happens (inside the measured
interval) without a second input or a control endpoint; deleting the file before
sleeping makes the stall happen once. Tests create the file atomically (write a
temporary file, then rename it), so the model never reads it half-written.
"""

import os
import time

import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        self.flag = os.path.join(args["model_repository"], "STALL_MS")

    def execute(self, requests):
        if os.path.exists(self.flag):
            stall_ms = 0.0
            try:
                with open(self.flag) as f:
                    text = f.read().strip()
                if text:  # an empty file is still being written: look again next time
                    stall_ms = float(text)
                    os.remove(self.flag)
            except (OSError, ValueError):
                stall_ms = 0.0
            if stall_ms > 0:
                time.sleep(stall_ms / 1000.0)
        responses = []
        for request in requests:
            data = pb_utils.get_input_tensor_by_name(request, "INPUT0").as_numpy()
            responses.append(pb_utils.InferenceResponse(output_tensors=[pb_utils.Tensor("OUTPUT0", data)]))
        return responses
