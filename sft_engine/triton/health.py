"""Is a model really serving? Triton's model readiness plus one real inference.

Why readiness alone is not enough: with Triton 2.51 (NGC 24.10) a Python-backend
model whose stub process died keeps answering ``/v2/models/<m>/ready`` with 200 while
it fails every request with ``[500] Stub process '<m>_0_0' is not healthy.``. A health
inference tells the two apart: a request of zeros shaped by the model's own config.
An answer (200), or a refusal of the input by the model (4xx: e.g. an image model
that cannot decode zero bytes), means the model's code ran; a 5xx, no answer, or a
model that is not ready means it does not serve.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from dataclasses import dataclass
from typing import Any, Mapping

from sft_engine.triton.control import HttpControl, ControlError
from sft_engine.triton.model import model_path

__all__ = ["Health", "health_request", "check_model"]

#: the JSON element a zero of each Triton data type is written as
_ZERO: dict[str, Any] = {"BOOL": False, "BYTES": ""}


@dataclass(frozen=True)
class Health:
    """One model's state: ``ok``, and when not, the one-line reason (the server's own message)."""

    model: str
    ok: bool
    message: str = ""


def health_request(config: Mapping[str, Any]) -> dict[str, Any]:
    """The body of a one-item inference request of zeros for a model's config (HTTP JSON form)."""
    batching = int(config.get("max_batch_size", 0) or 0) > 0
    inputs = []
    for spec in config.get("input", []):
        dims = [max(1, int(d)) for d in spec.get("dims", [])]
        shape = ([1] if batching else []) + dims
        datatype = str(spec.get("data_type", "TYPE_FP32")).removeprefix("TYPE_")
        datatype = "BYTES" if datatype == "STRING" else datatype
        count = 1
        for d in shape:
            count *= d
        inputs.append({"name": spec["name"], "shape": shape, "datatype": datatype, "data": [_ZERO.get(datatype, 0)] * count})
    return {"inputs": inputs}


def check_model(control: HttpControl, model: str, *, config: Mapping[str, Any] | None = None, timeout_s: float = 5.0) -> Health:
    """Model ready and a health inference answered (or refused as bad input); ``config`` saves a round trip."""
    try:
        if not control.model_ready(model):
            return Health(model, False, f"model {model} is not ready")
        body = health_request(config if config is not None else control.model_config(model))
    except ControlError as exc:
        return Health(model, False, exc.server_message)
    req = urllib.request.Request(f"http://{control.url}{model_path(model, '')}/infer", data=json.dumps(body).encode(),
                                 method="POST", headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout_s) as resp:
            resp.read()
        return Health(model, True)
    except urllib.error.HTTPError as exc:
        text = " ".join(HttpControl.error_text(exc.read()).split())
        if 400 <= exc.code < 500:
            return Health(model, True, text)
        return Health(model, False, f"[{exc.code}] {text}")
    except (OSError, ValueError) as exc:
        return Health(model, False, f"no answer from {control.url}: {exc}")


#: ``check_model`` as a stand-alone script for a container's exec readiness probe (python3, the
#: standard library only: the NGC image has no sft-engine). Arguments: HTTP port, model names.
#: Exit 0 when the server is ready and every model answers a health inference (or refuses its
#: zeros as bad input), 1 otherwise with the reason on stderr.
PROBE_SCRIPT = r'''
import json, sys, urllib.error, urllib.request
base = "http://127.0.0.1:" + sys.argv[1]
def call(path, body=None):
    req = urllib.request.Request(base + path, data=None if body is None else json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=2.5) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()
if call("/v2/health/ready")[0] != 200:
    sys.exit("server not ready")
for model in sys.argv[2:]:
    code, raw = call("/v2/models/" + model + "/config")
    if code != 200:
        sys.exit(model + ": no config (" + str(code) + ")")
    config = json.loads(raw)
    batch = [1] if int(config.get("max_batch_size") or 0) > 0 else []
    inputs = []
    for spec in config.get("input", []):
        shape = batch + [max(1, int(d)) for d in spec.get("dims", [])]
        kind = str(spec.get("data_type", "TYPE_FP32")).replace("TYPE_", "")
        kind = "BYTES" if kind == "STRING" else kind
        n = 1
        for d in shape:
            n *= d
        inputs.append({"name": spec["name"], "shape": shape, "datatype": kind,
                       "data": [{"BOOL": False, "BYTES": ""}.get(kind, 0)] * n})
    code, raw = call("/v2/models/" + model + "/infer", {"inputs": inputs})
    if code >= 500:
        sys.exit(model + ": " + raw.decode(errors="replace")[:200])
'''
