"""Energy tracking: main process only, nothing on disk, estimates labelled as such, clear errors."""

from __future__ import annotations

import importlib.util
from types import SimpleNamespace

import pytest

from hf_critical.experiments import energy
from hf_critical.experiments.energy import (
    power_counters,
    report_from_tracker,
    require_codecarbon,
    track_energy,
    validate_country_iso_code,
)


class CPU:
    def __init__(self, mode):
        self._mode = mode


class GPU:
    pass


class RAM:
    pass


def emissions_data(**overrides):
    values = dict(
        duration=2.0, energy_consumed=0.003, cpu_energy=0.001, gpu_energy=0.0015, ram_energy=0.0005, emissions=0.001,
        cpu_model="Test CPU", gpu_count=1, codecarbon_version="x",
    )
    values.update(overrides)
    return SimpleNamespace(**values)


class FakeTracker:
    def __init__(self, hardware, data):
        self._hardware = hardware
        self.data = data
        self.calls = []

    def start(self):
        self.calls.append("start")

    def stop(self):
        self.calls.append("stop")
        self.final_emissions_data = self.data


NO_COUNTERS = {"rapl": False, "cuda": False}


def test_rapl_and_nvml_count_as_measured():
    tracker = FakeTracker([CPU("intel_rapl"), GPU(), RAM()], emissions_data())
    tracker.stop()
    report = report_from_tracker(tracker, "train", "FRA", {"rapl": True, "cuda": True})
    assert report.estimated is False
    assert report.measured_components == ["cpu (intel_rapl)", "gpu (NVML)"]
    assert report.estimated_components == ["ram (size-based model)"]
    assert report.energy_kwh == 0.003 and report.emissions_kg == 0.001 and report.gpu_count == 1
    assert report.note.startswith("measured by hardware counters")


def test_cpu_load_model_is_an_estimate_and_says_why():
    tracker = FakeTracker([RAM(), CPU("cpu_load")], emissions_data(gpu_energy=0.0, gpu_count=0))
    tracker.stop()
    report = report_from_tracker(tracker, "eval", "USA", NO_COUNTERS)
    assert report.estimated is True and report.cpu_mode == "cpu_load"
    assert report.measured_components == []
    assert "ESTIMATE (no RAPL power counter, no GPU)" in report.note
    assert "cpu (cpu_load: TDP x load)" in report.note


def test_a_gpu_reading_does_not_make_a_modelled_cpu_measured():
    tracker = FakeTracker([CPU("constant"), GPU()], emissions_data())
    tracker.stop()
    report = report_from_tracker(tracker, "train", "USA", {"rapl": False, "cuda": True})
    assert report.estimated is True
    assert report.measured_components == ["gpu (NVML)"]
    assert "no RAPL power counter)" in report.note and "measured gpu (NVML)" in report.note


def test_track_energy_with_a_tracker_on_the_main_process():
    trackers = []

    def factory(country, project):
        trackers.append(FakeTracker([CPU("cpu_load")], emissions_data()))
        assert (country, project) == ("DEU", "hf_critical-train")
        return trackers[-1]

    with track_energy("train", country_iso_code="DEU", is_main_process=True, tracker_factory=factory) as measurement:
        assert trackers[0].calls == ["start"]
    assert trackers[0].calls == ["start", "stop"]
    assert measurement.tracked and measurement.wall_seconds >= 0
    assert measurement.report.phase == "train" and measurement.report.country_iso_code == "DEU"


def test_tracker_stops_when_the_block_raises():
    tracker = FakeTracker([], emissions_data())
    with pytest.raises(RuntimeError, match="boom"):
        with track_energy("train", is_main_process=True, tracker_factory=lambda c, p: tracker):
            raise RuntimeError("boom")
    assert tracker.calls == ["start", "stop"]


@pytest.mark.parametrize("kwargs", [dict(enabled=False, is_main_process=True), dict(enabled=True, is_main_process=False)])
def test_no_tracker_when_disabled_or_not_the_main_process(kwargs):
    def factory(country, project):
        raise AssertionError("no tracker expected")

    with track_energy("train", tracker_factory=factory, **kwargs) as measurement:
        pass
    assert measurement.report is None and not measurement.tracked


def test_rank_from_the_environment(monkeypatch):
    monkeypatch.setenv("RANK", "1")
    with track_energy("train", tracker_factory=lambda c, p: pytest.fail("rank 1 must not track")) as measurement:
        pass
    assert measurement.report is None


def test_missing_codecarbon_names_the_pip_command(monkeypatch):
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        energy.importlib.util, "find_spec", lambda name, *a: None if name == "codecarbon" else real_find_spec(name, *a)
    )
    with pytest.raises(ImportError, match="pip install codecarbon"):
        require_codecarbon()
    with pytest.raises(ImportError, match="pip install codecarbon"):
        with track_energy("train", is_main_process=True):
            pass
    with track_energy("train", enabled=False) as measurement:  # disabled: codecarbon not needed
        pass
    assert measurement.report is None


def test_country_codes_are_checked():
    assert validate_country_iso_code("fra") == "FRA"
    with pytest.raises(ValueError, match="`energy_country_iso_code` must be a 3-letter ISO"):
        validate_country_iso_code("France")
    with pytest.raises(ValueError, match="'XYZ' is not a country codecarbon knows"):
        validate_country_iso_code("XYZ")


def test_power_counters_reads_rapl_energy_files(tmp_path):
    assert power_counters(str(tmp_path / "missing"))["rapl"] is False
    zone = tmp_path / "intel-rapl:0"
    zone.mkdir()
    (zone / "energy_uj").write_text("123\n")
    assert power_counters(str(tmp_path))["rapl"] is True


def test_real_codecarbon_tracker_writes_no_file(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with track_energy("train", country_iso_code="FRA", is_main_process=True) as measurement:
        sum(i * i for i in range(200_000))
    report = measurement.report
    assert report is not None and report.energy_kwh > 0 and report.duration_seconds > 0
    assert report.country_iso_code == "FRA" and report.cpu_mode is not None
    counters = power_counters()
    if not counters["rapl"] and not counters["cuda"]:
        assert report.estimated and report.note.startswith("ESTIMATE")
    assert list(tmp_path.iterdir()) == []  # no emissions.csv


def test_default_tracker_measures_the_whole_machine():
    """One tracker on the main process covers every local rank: codecarbon's machine mode, set explicitly."""
    pytest.importorskip("codecarbon")
    from hf_critical.experiments.energy import _default_tracker

    tracker = _default_tracker("FRA", "hf_critical-test")
    assert tracker._tracking_mode == "machine"
