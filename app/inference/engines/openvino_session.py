"""OpenVINO engine: the measured default on CPUs (see docs/performance.md).

Same rule as onnxruntime's providers: every requested device is required. A
device this OpenVINO cannot see, or a compiled model that does not execute on
every requested device, is refused with ``ProviderUnavailable``. ``AUTO`` and
``MULTI`` are refused outright, because falling back quietly is their job.

The first conversions between numpy and OpenVINO types in a process build tables
of OpenVINO's Python binding (function-local statics of ``py::dtype``) whose
construction lets go of the GIL: two threads making their first inferences at
once can deadlock there, one waiting for the GIL inside the table's initializer,
the other waiting for the initializer while holding the GIL, and then every
Python thread of the process (the event loop too) waits forever.
``create_openvino_session`` therefore builds them, one thread at a time, before
it hands out a session (``prime_type_conversions``).
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

import numpy as np
import openvino as ov

from app.errors import ModelError, ProviderUnavailable
from app.inference.engines.base import (
    EngineName,
    Precision,
    PrecisionChoice,
    RuntimeOptions,
    Tensor,
)

logger = logging.getLogger(__name__)

_FALLBACK_DEVICES = ("AUTO", "MULTI")
# One thread at a time through the binding's first type conversions (see above);
# a waiter releases the GIL, so the thread inside can finish.
_PRIMING = threading.Lock()


class OpenVinoSession:
    """An ``EngineSession`` over a compiled model; one infer request per concurrent call.

    Requests are pooled: a call takes an idle one or creates one, and gives it
    back, so the pool grows to the number of threads that ever ran at once.
    """

    engine: EngineName = "openvino"

    def __init__(self, compiled: ov.CompiledModel, devices: tuple[str, ...]) -> None:
        self._compiled = compiled
        self._devices = devices
        self._precision = _compiled_precision(compiled)
        self._inputs = tuple(port.any_name for port in compiled.inputs)
        self._outputs = tuple(port.any_name for port in compiled.outputs)
        self._idle: queue.SimpleQueue[ov.InferRequest] = queue.SimpleQueue()

    @property
    def input_names(self) -> tuple[str, ...]:
        return self._inputs

    @property
    def output_names(self) -> tuple[str, ...]:
        return self._outputs

    @property
    def devices(self) -> tuple[str, ...]:
        return self._devices

    @property
    def precision(self) -> str:
        return self._precision

    def run(self, feeds: Mapping[str, Tensor]) -> list[Tensor]:
        with self._request() as request:
            # share_inputs: the caller keeps its arrays alive until run returns;
            # outputs are copied out of the request, which is reused afterwards.
            results = request.infer(dict(feeds), share_inputs=True, share_outputs=False)
            return [np.asarray(results[port], dtype=np.float32) for port in self._compiled.outputs]

    @contextmanager
    def _request(self) -> Iterator[ov.InferRequest]:
        try:
            request = self._idle.get_nowait()
        except queue.Empty:
            request = self._compiled.create_infer_request()
        try:
            yield request
        finally:
            self._idle.put(request)


def create_openvino_session(
    model_bytes: bytes, name: str, options: RuntimeOptions
) -> OpenVinoSession:
    core = ov.Core()
    devices = tuple(options.devices)
    check_devices_available(devices, core.available_devices)
    target = devices[0] if len(devices) == 1 else "HETERO:" + ",".join(devices)
    precision = resolve_precision(options.precision, devices, _cpu_capabilities(core))
    try:
        model = core.read_model(model_bytes)
        compiled = core.compile_model(model, target, _config(devices, options, precision))
    except Exception as exc:  # OpenVINO raises RuntimeError with its own messages
        raise ModelError(f"OpenVINO could not load {name} on {target}: {exc}") from exc
    in_use = tuple(str(device) for device in compiled.get_property("EXECUTION_DEVICES"))
    check_devices_in_use(name, devices, in_use)
    prime_type_conversions()
    return OpenVinoSession(compiled, in_use)


def prime_type_conversions() -> None:
    """Build the binding's numpy <-> OpenVINO type tables now, in one thread, so that
    concurrent first inferences find them built (the deadlock in the module docs).

    Each conversion ``OpenVinoSession.run`` makes is made once: an array to a tensor,
    a request tensor's element type to a numpy dtype, a tensor's data to an array.
    """
    with _PRIMING:  # after the first time, three cheap calls
        values = np.zeros(1, dtype=np.float32)
        probe = ov.Tensor(values, shared_memory=True)
        probe.get_element_type().to_dtype()
        np.asarray(probe.data)


def _compiled_precision(compiled: ov.CompiledModel) -> str:
    try:
        return str(compiled.get_property("INFERENCE_PRECISION_HINT").get_type_name())
    except RuntimeError:  # HETERO and some device plugins do not report it
        return "device default"


def _cpu_capabilities(core: ov.Core) -> tuple[str, ...]:
    return tuple(str(c) for c in core.get_property("CPU", "OPTIMIZATION_CAPABILITIES"))


def cpu_computes_bf16() -> bool:
    """Whether this CPU runs bf16 natively (what ``auto`` precision picks bf16 for)."""
    return "BF16" in _cpu_capabilities(ov.Core())


def resolve_precision(
    choice: PrecisionChoice, devices: Sequence[str], cpu_capabilities: Sequence[str]
) -> Precision | None:
    """The inference precision to ask for; None leaves a non-CPU device its own default.

    On the CPU, ``auto`` is bf16 where it computes bf16 natively (OpenVINO lists
    ``BF16``: AVX512-BF16 or AMX) and f32 elsewhere. ``bf16`` is refused on a CPU
    without it (OpenVINO would emulate it, slower than f32, and say nothing) and on
    other devices. ``f32`` is passed to any device.
    """
    cpu = tuple(devices) == ("CPU",)
    native = cpu and "BF16" in cpu_capabilities
    if choice == "auto":
        return ("bf16" if native else "f32") if cpu else None
    if choice == "bf16" and not cpu:
        raise ProviderUnavailable(
            "FACEREC_OPENVINO_PRECISION=bf16 applies to FACEREC_OPENVINO_DEVICES=CPU "
            f"only, not {list(devices)}",
            requested=list(devices),
        )
    if choice == "bf16" and not native:
        raise ProviderUnavailable(
            "FACEREC_OPENVINO_PRECISION=bf16 but this CPU has no native bf16 (AVX512-BF16 "
            f"or AMX; OpenVINO lists {list(cpu_capabilities)}); use auto or f32",
            requested=["CPU"],
            available=list(cpu_capabilities),
        )
    return choice


def _config(
    devices: Sequence[str], options: RuntimeOptions, precision: Precision | None
) -> dict[str, Any]:
    hint = {} if precision is None else {"INFERENCE_PRECISION_HINT": precision}
    if tuple(devices) != ("CPU",):
        return {"PERFORMANCE_HINT": "LATENCY", **hint}
    return {
        "PERFORMANCE_HINT": "LATENCY",
        "NUM_STREAMS": options.streams,
        # intra_op_threads is per call; OpenVINO divides its total among the streams.
        "INFERENCE_NUM_THREADS": options.intra_op_threads * options.streams,
        **hint,
        # Pinning threads to cores helps a machine this process owns; it hurts
        # in containers and on hosts shared with other work, the common case.
        "ENABLE_CPU_PINNING": False,
    }


def _base(device: str) -> str:
    return device.split(".", 1)[0].split(":", 1)[0]


def check_devices_available(requested: Sequence[str], available: Sequence[str]) -> None:
    """Refuse devices this OpenVINO cannot see, and the devices that fall back on purpose."""
    if not requested:
        raise ModelError("no OpenVINO device requested (FACEREC_OPENVINO_DEVICES)")
    refused = [device for device in requested if _base(device) in _FALLBACK_DEVICES]
    if refused:
        raise ProviderUnavailable(
            f"OpenVINO device(s) {refused} choose devices at run time and fall back "
            "quietly; name the devices (e.g. CPU, GPU) in FACEREC_OPENVINO_DEVICES",
            requested=list(requested),
            available=list(available),
        )
    visible = set(available) | {_base(device) for device in available}
    missing = [device for device in requested if device not in visible]
    if missing:
        raise ProviderUnavailable(
            f"OpenVINO device(s) {missing} requested (FACEREC_OPENVINO_DEVICES) but this "
            f"machine offers only {list(available)}; for NVIDIA GPUs use "
            "FACEREC_ENGINE=onnxruntime with the [gpu] extra",
            requested=list(requested),
            available=list(available),
        )


def check_devices_in_use(model: str, requested: Sequence[str], in_use: Sequence[str]) -> None:
    used = set(in_use) | {_base(device) for device in in_use}
    dropped = [device for device in requested if device not in used]
    if dropped:
        raise ProviderUnavailable(
            f"{model}: OpenVINO does not execute on {dropped} (in use: {list(in_use)})",
            requested=list(requested),
            in_use=list(in_use),
        )
