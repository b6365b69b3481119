"""Energy and emissions of one phase of a run (training, evaluation), from codecarbon's offline tracker.

Usage::

    with track_energy("train", country_iso_code="FRA") as energy:
        trainer.train()
    energy.report  # EnergyReport, or None on non-main processes / when disabled

Only the main process tracks, with codecarbon's ``tracking_mode="machine"`` (set explicitly): the
tracker reads the whole machine's CPU load / RAPL counters, RAM and every NVML GPU, not one process,
so one tracker per machine covers all local training processes (under ``torchrun`` /
``accelerate launch``, every rank on that machine). A second tracker on another rank would count the
same machine twice. On several machines only the first machine is measured (see
``docs/distributed.md``). Nothing is written to ``emissions.csv``.

**Measured or estimated.** codecarbon reads a power counter where there is one (Intel RAPL under
``/sys/class/powercap`` for the CPU, NVML for NVIDIA GPUs). Without RAPL it *models* CPU power as
a TDP constant times the CPU load; RAM power is always modelled from the RAM size. Each
`EnergyReport` says which of its components were measured and which estimated, and ``estimated``
is True when the CPU figure is a model (then the energy totals are estimates).
"""

from __future__ import annotations

import contextlib
import importlib.util
import inspect
import logging
import os
import re
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from typing import Any

from ..extras import install_hint

__all__ = [
    "EnergyMeasurement",
    "EnergyReport",
    "is_codecarbon_available",
    "power_counters",
    "require_codecarbon",
    "track_energy",
    "validate_country_iso_code",
]

logger = logging.getLogger(__name__)

INSTALL_HINT = install_hint("codecarbon")

#: codecarbon CPU modes that read a hardware energy counter; the others (``cpu_load``, ``constant``) are models.
MEASURED_CPU_MODES = ("intel_rapl", "intel_power_gadget", "windows_emi")

RAPL_DIR = "/sys/class/powercap"


def is_codecarbon_available() -> bool:
    try:
        return importlib.util.find_spec("codecarbon") is not None
    except (ImportError, ValueError):  # a finder that refuses it, or a module without a spec
        return False


def require_codecarbon() -> None:
    """Raise an ImportError that names the pip command when codecarbon is missing."""
    if not is_codecarbon_available():
        raise ImportError(
            f"energy tracking needs codecarbon, which is not installed: {INSTALL_HINT}; "
            "or turn energy tracking off (`--track_energy false` in the recipes)"
        )


def power_counters(rapl_dir: str = RAPL_DIR) -> dict[str, bool]:
    """Which hardware power counters this machine exposes: Intel RAPL (readable) and CUDA GPUs."""
    rapl = False
    if os.path.isdir(rapl_dir):
        for root, _, files in os.walk(rapl_dir):
            if "energy_uj" in files and os.access(os.path.join(root, "energy_uj"), os.R_OK):
                rapl = True
                break
    try:
        import torch

        cuda = torch.cuda.is_available()
    except ImportError:
        cuda = False
    return {"rapl": rapl, "cuda": cuda}


def validate_country_iso_code(code: Any, field_name: str = "energy_country_iso_code") -> str:
    """Check an ISO 3166-1 alpha-3 code (``"USA"``, ``"FRA"``) against codecarbon's energy-mix table."""
    if not isinstance(code, str) or not re.fullmatch(r"[A-Za-z]{3}", code):
        raise ValueError(f"`{field_name}` must be a 3-letter ISO 3166-1 alpha-3 country code like 'USA', got {code!r}")
    code = code.upper()
    if is_codecarbon_available():
        try:
            from codecarbon.input import DataSource

            known = DataSource().get_global_energy_mix_data()
        except Exception:  # an older codecarbon without this table: let the tracker decide
            known = None
        if known is not None and code not in known:
            raise ValueError(f"`{field_name}` {code!r} is not a country codecarbon knows (e.g. 'USA', 'FRA', 'DEU')")
    return code


@dataclass
class EnergyReport:
    """What codecarbon reported for one phase. Energies in kWh, emissions in kg CO2-eq, power in W."""

    phase: str
    duration_seconds: float
    energy_kwh: float
    cpu_energy_kwh: float
    gpu_energy_kwh: float
    ram_energy_kwh: float
    emissions_kg: float
    country_iso_code: str
    cpu_model: str | None
    gpu_count: int
    cpu_mode: str | None
    measured_components: list[str] = field(default_factory=list)
    estimated_components: list[str] = field(default_factory=list)
    estimated: bool = True
    note: str = ""
    codecarbon_version: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _classify(hardware: list, counters: dict[str, bool]) -> tuple[str | None, list[str], list[str]]:
    """codecarbon's CPU mode and the components it measured / estimated (each named ``"<part> (<how>)"``)."""
    cpu_mode = None
    measured: list[str] = []
    estimated: list[str] = []
    for item in hardware:
        kind = type(item).__name__
        if kind == "CPU":
            cpu_mode = getattr(item, "_mode", None) or "model"
            if cpu_mode in MEASURED_CPU_MODES:
                measured.append(f"cpu ({cpu_mode})")
            else:
                estimated.append(f"cpu ({cpu_mode}: TDP x load)")
        elif kind == "AppleSiliconChip":
            cpu_mode = "apple_powermetrics"
            measured.append("cpu (apple_powermetrics)")
        elif kind == "GPU":
            measured.append("gpu (NVML)")
        elif kind == "RAM":
            estimated.append("ram (size-based model)")
        else:
            estimated.append(f"{kind.lower()} (model)")
    if cpu_mode is None:
        # codecarbon did not list a CPU (other versions): go by what the machine exposes.
        (measured if counters["rapl"] else estimated).append("cpu (RAPL)" if counters["rapl"] else "cpu (model)")
    return cpu_mode, measured, estimated


def _note(estimated: bool, counters: dict[str, bool], measured: list[str], estimated_parts: list[str]) -> str:
    if not estimated:
        return f"measured by hardware counters: {', '.join(measured)}; modelled: {', '.join(estimated_parts) or 'none'}"
    missing = []
    if not counters["rapl"]:
        missing.append("no RAPL power counter")
    if not counters["cuda"]:
        missing.append("no GPU")
    why = f" ({', '.join(missing)})" if missing else ""
    return (
        f"ESTIMATE{why}: codecarbon modelled {', '.join(estimated_parts)}"
        + (f"; measured {', '.join(measured)}" if measured else "")
        + ". Compare runs on the same machine only."
    )


def report_from_tracker(tracker: Any, phase: str, country_iso_code: str, counters: dict[str, bool] | None = None):
    """Build an `EnergyReport` from a stopped codecarbon tracker (None if it produced no data)."""
    data = getattr(tracker, "final_emissions_data", None)
    if data is None:
        return None
    counters = counters if counters is not None else power_counters()
    cpu_mode, measured, estimated_parts = _classify(list(getattr(tracker, "_hardware", []) or []), counters)
    estimated = not any(part.startswith("cpu") for part in measured)
    return EnergyReport(
        phase=phase,
        duration_seconds=float(data.duration),
        energy_kwh=float(data.energy_consumed),
        cpu_energy_kwh=float(data.cpu_energy),
        gpu_energy_kwh=float(data.gpu_energy),
        ram_energy_kwh=float(data.ram_energy),
        emissions_kg=float(data.emissions),
        country_iso_code=country_iso_code,
        cpu_model=getattr(data, "cpu_model", None),
        gpu_count=int(getattr(data, "gpu_count", 0) or 0),
        cpu_mode=cpu_mode,
        measured_components=measured,
        estimated_components=estimated_parts,
        estimated=estimated,
        note=_note(estimated, counters, measured, estimated_parts),
        codecarbon_version=getattr(data, "codecarbon_version", None),
    )


@dataclass
class EnergyMeasurement:
    """Handle yielded by `track_energy`; ``report`` is filled when the block exits."""

    phase: str
    tracked: bool = False
    wall_seconds: float | None = None
    report: EnergyReport | None = None


def _default_tracker(country_iso_code: str, project_name: str):
    from codecarbon import OfflineEmissionsTracker
    from codecarbon.emissions_tracker import BaseEmissionsTracker

    logging.getLogger("codecarbon").setLevel(logging.ERROR)
    # OfflineEmissionsTracker forwards **kwargs to BaseEmissionsTracker, which declares most options.
    parameters = {
        **inspect.signature(BaseEmissionsTracker.__init__).parameters,
        **inspect.signature(OfflineEmissionsTracker.__init__).parameters,
    }
    kwargs: dict[str, Any] = dict(country_iso_code=country_iso_code, project_name=project_name, log_level="error")
    # Nothing on disk: newer codecarbon takes `output_methods`, older `save_to_file`.
    if "output_methods" in parameters:
        kwargs["output_methods"] = []
    else:
        kwargs["save_to_file"] = False
    if "tracking_mode" in parameters:
        kwargs["tracking_mode"] = "machine"  # all processes on the machine (every local rank), not just this one
    if "allow_multiple_runs" in parameters:
        kwargs["allow_multiple_runs"] = True  # no lock file; several phases may overlap in tests
    return OfflineEmissionsTracker(**kwargs)


def _is_main_process() -> bool:
    try:
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            return dist.get_rank() == 0
    except ImportError:
        pass
    return int(os.environ.get("RANK", "0")) == 0


@contextlib.contextmanager
def track_energy(
    phase: str,
    country_iso_code: str = "USA",
    enabled: bool = True,
    is_main_process: bool | None = None,
    tracker_factory: Callable[[str, str], Any] | None = None,
) -> Iterator[EnergyMeasurement]:
    """Track the energy of the ``with`` block on the main process.

    Args:
        phase: a name for the block (``"train"``, ``"eval"``).
        country_iso_code: ISO 3166-1 alpha-3 code of the electricity mix used for the emissions.
        enabled: False yields a handle whose ``report`` stays None (codecarbon is not needed).
        is_main_process: None detects it (torch.distributed rank, else the ``RANK`` variable).
        tracker_factory: ``(country_iso_code, project_name) -> tracker`` with ``start()``/``stop()``
            and ``final_emissions_data`` (tests pass a fake; default: codecarbon's offline tracker).
    """
    measurement = EnergyMeasurement(phase=phase)
    if is_main_process is None:
        is_main_process = _is_main_process()
    if not enabled or not is_main_process:
        yield measurement
        return
    if tracker_factory is None:
        require_codecarbon()
        country_iso_code = validate_country_iso_code(country_iso_code)
        tracker_factory = _default_tracker
    tracker = tracker_factory(country_iso_code, f"hf_critical-{phase}")
    counters = power_counters()
    tracker.start()
    measurement.tracked = True
    start = time.perf_counter()
    try:
        yield measurement
    finally:
        measurement.wall_seconds = time.perf_counter() - start
        tracker.stop()
        measurement.report = report_from_tracker(tracker, phase, country_iso_code, counters)
        if measurement.report is None:
            logger.warning("codecarbon returned no data for phase %r; energy is not reported", phase)
