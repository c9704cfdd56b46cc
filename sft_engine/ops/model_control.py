"""Triton's model-repository API, as the operations commands need it.

Rollout and tune change what a *running* server serves, so every change goes through
the repository extension (``POST /v2/repository/models/<m>/load`` with a config
override) and every outcome is read back from the server (repository index, readiness,
an answered request) rather than assumed. The calls are the shared control client's
(``sft_engine.triton.control``); its errors become sft-engine errors with a hint; the
one the user meets first - a server started without explicit model control - says
how to start it.
"""

from __future__ import annotations

import logging
import time
from typing import Any, Iterable, Mapping

import numpy as np

from sft_engine.errors import ConfigError, ServerError
from sft_engine.triton.address import parse_address
from sft_engine.triton.control import ControlError, HttpControl
from sft_engine.triton.failures import classify_exception

__all__ = ["ModelControl", "LoadFailed", "EXPLICIT_MODE_HINT", "ADMIN_KEY_HINT", "VersionState"]

LOGGER = logging.getLogger(__name__)

EXPLICIT_MODE_HINT = "start it with: sft-engine serve --model-control-mode explicit --load-model NAME (or tritonserver --model-control-mode=explicit)"
_POLL_S = 0.1
#: control-plane calls other than load/unload (index, config, readiness)
_CALL_TIMEOUT_S = 10.0

#: version -> state as the repository index reports it (READY, LOADING, UNLOADING, UNAVAILABLE)
VersionState = dict[int, str]


class LoadFailed(Exception):
    """The server refused or failed a load request (the server's own message)."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


def _is_explicit_mode_error(text: str) -> bool:
    return "not allowed" in text and ("polling" in text or "explicit" in text)


ADMIN_KEY_HINT = "pass --admin-key-file FILE (the file sft-engine serve was given) or set SFT_ENGINE_ADMIN_KEY"


def _check_key_refusal(exc: ControlError, url: str, what: str) -> None:
    """A server whose repository API is restricted refuses a call without (or with a wrong) admin key: say so."""
    if "is restricted, expecting header" in exc.server_message:
        raise ServerError(f"the server at {url} refused {what}: the model-repository API needs the admin key", hint=ADMIN_KEY_HINT) from None


class ModelControl:
    """Control-plane calls to one Triton server over HTTP (``host:port``), on the shared control client."""

    def __init__(self, url: str, load_timeout_s: float = 600.0, admin_key: str | None = None) -> None:
        """``admin_key``: sent with every control-plane call (needed where the server restricts its repository API)."""
        self._control = HttpControl(parse_address(url, "http"), timeout_s=_CALL_TIMEOUT_S, load_timeout_s=load_timeout_s,
                                    admin_key=admin_key)
        self.url = self._control.url
        self.load_timeout_s = load_timeout_s
        self._infer_client: Any = None

    def close(self) -> None:
        self._control.close()
        if self._infer_client is not None:
            self._infer_client.close()

    def __enter__(self) -> "ModelControl":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- reading ---------------------------------------------------------------------
    def check_live(self) -> None:
        """Raise ServerError unless a Triton server answers at the URL."""
        try:
            live = self._control.server_live()
        except ControlError as exc:
            raise ServerError(f"no Triton server answers at {self.url}: {exc.server_message}",
                              hint="start one (sft-engine serve --model-control-mode explicit) or fix --url") from None
        if not live:
            raise ServerError(f"the Triton server at {self.url} is not live", hint="check the server log")

    def _index(self) -> list[dict[str, Any]]:
        try:
            return self._control.repository_index()
        except ControlError as exc:
            _check_key_refusal(exc, self.url, "the repository index")
            raise ServerError(f"cannot read the repository index at {self.url}: {exc.server_message}", hint="check --url and the server log") from None

    def versions(self, model: str) -> VersionState:
        """Every version of ``model`` the server knows, with its state."""
        out: VersionState = {}
        for entry in self._index():
            if entry.get("name") == model and str(entry.get("version", "")).isdigit():
                out[int(entry["version"])] = str(entry.get("state", ""))
        return out

    def ready_versions(self, model: str) -> list[int]:
        return sorted(v for v, state in self.versions(model).items() if state == "READY")

    def known_to_server(self, model: str) -> bool:
        """True when the server's repository has a model of this name (loaded or not)."""
        return any(entry.get("name") == model for entry in self._index())

    def live_config(self, model: str) -> dict[str, Any] | None:
        """The configuration the server runs ``model`` with, or None when it is not loaded."""
        try:
            return self._control.model_config(model)
        except ControlError as exc:  # "unknown model" is the expected answer for an unloaded model
            LOGGER.debug("no live config of %s at %s: %s (%s)", model, self.url, exc.server_message, exc.kind.value)
            return None

    def is_ready(self, model: str, version: int | None = None) -> bool:
        try:
            return self._control.model_ready(model, "" if version is None else str(version))
        except ControlError:
            return False

    # -- changing --------------------------------------------------------------------
    def load(self, model: str, config: Mapping[str, Any] | None) -> float:
        """Load (or reload) ``model`` with ``config`` as override; returns the seconds it took.

        Triton answers only after the versions in the config's policy have loaded (warmup
        included); versions that leave the policy are unloaded in the background.
        """
        started = time.monotonic()
        try:
            self._control.load_model(model, config)
        except ControlError as exc:
            text = exc.server_message
            _check_key_refusal(exc, self.url, f"loading {model}")
            if _is_explicit_mode_error(text):
                raise ServerError(f"the server at {self.url} does not allow loading models ({text})", hint=EXPLICIT_MODE_HINT) from None
            raise LoadFailed(text) from None
        return time.monotonic() - started

    def unload(self, model: str) -> None:
        try:
            self._control.unload_model(model)
        except ControlError as exc:
            text = exc.server_message
            _check_key_refusal(exc, self.url, f"unloading {model}")
            if _is_explicit_mode_error(text):
                raise ServerError(f"the server at {self.url} does not allow unloading models ({text})", hint=EXPLICIT_MODE_HINT) from None
            raise LoadFailed(text) from None

    # -- waiting ---------------------------------------------------------------------
    def wait_ready(self, model: str, version: int, timeout_s: float) -> bool:
        """Poll until ``version`` is READY; False when the timeout passes first."""
        deadline = time.monotonic() + timeout_s
        while True:
            if self.is_ready(model, version):
                return True
            if time.monotonic() >= deadline:
                return False
            time.sleep(_POLL_S)

    def wait_gone(self, model: str, versions: Iterable[int], timeout_s: float) -> list[int]:
        """Poll until none of ``versions`` is READY/UNLOADING/LOADING; returns those still there."""
        wanted = set(versions)
        deadline = time.monotonic() + timeout_s
        while True:
            state = self.versions(model)
            left = sorted(v for v in wanted if state.get(v) in ("READY", "UNLOADING", "LOADING"))
            if not left or time.monotonic() >= deadline:
                return left
            time.sleep(_POLL_S)

    # -- inference -------------------------------------------------------------------
    def infer(self, model: str, version: int | None, input_name: str, output_name: str, batch: np.ndarray) -> tuple[np.ndarray, int]:
        """One request; returns the output and the version that answered it (tritonclient's HTTP client)."""
        import tritonclient.http as http

        if self._infer_client is None:
            self._infer_client = http.InferenceServerClient(self.url, connection_timeout=5.0, network_timeout=self.load_timeout_s)
        tensor = http.InferInput(input_name, list(batch.shape), "FP32")
        tensor.set_data_from_numpy(np.ascontiguousarray(batch, dtype=np.float32), binary_data=True)
        try:
            result = self._infer_client.infer(model, [tensor], model_version="" if version is None else str(version),
                                              outputs=[http.InferRequestedOutput(output_name, binary_data=True)])
        except Exception as exc:  # noqa: BLE001 - InferenceServerException and transport errors alike
            failure = classify_exception(exc)
            if failure is None:
                raise
            where = f"version {version}" if version is not None else "the default version"
            raise ServerError(f"inference on {model} {where} failed: {' '.join(failure.message.split())}", hint="check the server log") from None
        answered = result.get_response().get("model_version", "")
        out = result.as_numpy(output_name)
        if out is None:
            raise ConfigError(f"model {model} returned no output {output_name!r}", hint="check the model's config")
        return out, int(answered) if str(answered).isdigit() else -1
