"""Results JSON without secrets, the model-card section, summary lines, and the deferred Hub push."""

from __future__ import annotations

import dataclasses
import json
from types import SimpleNamespace

import huggingface_hub
import pytest

from hf_critical import CriticalPeriodArguments
from hf_critical.experiments.hub import HubPushError, HubPushRequest, defer_hub_push, push_outputs
from hf_critical.experiments.model_card import CARD_BEGIN, model_card_section, summary_lines, update_model_card
from hf_critical.experiments.redaction import REDACTED, is_secret_name, redact_secrets
from hf_critical.experiments.results import ReportingArguments, k_schedule, write_results
from hf_critical.experiments.savings import compute_savings

ARG_TOKEN = "hf_FakeArgumentToken1234567890"
ENV_TOKEN = "hf_FakeEnvironmentToken0987654321"
LEGACY_ENV_TOKEN = "hf_FakeLegacyEnvToken5555555555"


@pytest.fixture
def fake_env_tokens(monkeypatch):
    monkeypatch.setenv("HF_TOKEN", ENV_TOKEN)
    monkeypatch.setenv("HUGGING_FACE_HUB_TOKEN", LEGACY_ENV_TOKEN)


# ---- secrets -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name", ["hub_token", "HF_TOKEN", "api_key", "openai_api_key", "apikey", "client_secret", "db_password", "auth",
             "credentials", "accessToken", "aws-secret-access-key", "key"]
)
def test_secret_names(name):
    assert is_secret_name(name)


@pytest.mark.parametrize(
    "name", ["tokenizer_name", "include_tokens_per_second", "average_tokens_across_devices", "max_seq_length",
             "keyboard", "monkey_patch", "label_names", "author"]
)
def test_names_that_are_not_secrets(name):
    assert not is_secret_name(name)


def test_only_hub_token_is_a_secret_among_the_training_arguments():
    names = [f.name for f in dataclasses.fields(CriticalPeriodArguments)] + [f.name for f in dataclasses.fields(ReportingArguments)]
    assert [n for n in names if is_secret_name(n)] == ["hub_token"]


def test_redaction_by_name_and_by_value(fake_env_tokens):
    record = {
        "hub_token": ARG_TOKEN,
        "tokenizer_name": "bert",
        "include_tokens_per_second": True,
        "nested": [{"api_key": "k-123", "password": None, "url": f"https://x.org/?t={ENV_TOKEN}&a=1"}],
        "note": f"pushed with {ARG_TOKEN}",
        "legacy": LEGACY_ENV_TOKEN,
        "count": 3,
    }
    clean = redact_secrets(record, secrets=[ARG_TOKEN])
    assert clean == {
        "hub_token": REDACTED,
        "tokenizer_name": "bert",
        "include_tokens_per_second": True,
        "nested": [{"api_key": REDACTED, "password": None, "url": f"https://x.org/?t={REDACTED}&a=1"}],
        "note": f"pushed with {REDACTED}",
        "legacy": REDACTED,
        "count": 3,
    }
    assert record["hub_token"] == ARG_TOKEN  # the input is not modified


def test_results_file_holds_no_token_and_no_nan(tmp_path, fake_env_tokens):
    args = CriticalPeriodArguments(output_dir=str(tmp_path), hub_token=ARG_TOKEN, run_name=f"run-{ENV_TOKEN}", report_to=[])
    results = {"arguments": {"training": args.to_dict(), "raw": dataclasses.asdict(args)}, "loss": float("nan")}
    path = write_results(tmp_path / "results.json", results, secrets=[ARG_TOKEN])
    text = open(path, encoding="utf-8").read()
    for token in (ARG_TOKEN, ENV_TOKEN, LEGACY_ENV_TOKEN):
        assert token not in text
    data = json.loads(text)
    assert data["loss"] is None
    assert data["arguments"]["raw"]["hub_token"] == REDACTED
    assert data["arguments"]["raw"]["run_name"] == f"run-{REDACTED}"


# ---- model card and summary ---------------------------------------------------------------------------


def results_for(switch_step: int | None, energy_estimated: bool | None = True) -> dict:
    record = [{"step": s, "rows": 64 if switch_step is None or s <= switch_step else 16, "seconds": 1.0} for s in range(1, 9)]
    savings = compute_savings(record, switch_step, 4, 1, train_seconds=8.0, train_energy_kwh=0.002 if energy_estimated is not None else None)
    measured, derived = savings["measured"], savings["derived"]
    measured.update(optimizer_steps=8, train_emissions_kg=0.001, train_energy_is_estimate=energy_estimated)
    derived["cost"] = {
        "currency": "EUR",
        "with_switch": {"machine_cost": 0.004, "electricity_cost": None},
        "without_switch_estimate": {"machine_cost": 0.006, "electricity_cost": None},
    }
    period = None
    if switch_step is not None:
        period = {"switch_step": switch_step, "switch_epoch": 1.0, "detector": "fixed(step=4)", "copies_before": 4, "copies_after": 1}
    energy = {}
    if energy_estimated is not None:
        note = "ESTIMATE (no RAPL power counter, no GPU): codecarbon modelled cpu. Compare runs on the same machine only."
        energy = {"train": {"estimated": energy_estimated, "note": note}}
    return {
        "critical_period": period,
        "detector": "fixed(step=4)" if switch_step else "never()",
        "measured": measured,
        "derived": derived,
        "energy": energy,
        "metrics": {"eval": {"eval_accuracy": 0.9, "eval_runtime": 1.0}},
        "notes": ["train energy is an ESTIMATE (no RAPL power counter, no GPU)"],
    }


def test_summary_lines_after_a_switch():
    lines = "\n".join(summary_lines(results_for(4), {"results": "out/r.json"}))
    assert "critical period ended    : step 4 of 8 (epoch 1.00), fixed(step=4); 4 -> 1 copies" in lines
    assert "eval_accuracy            : 0.9000" in lines and "eval_runtime" not in lines
    assert "training rows            : 320 measured; 512 without the switch (derived); saved 37.5 %" in lines
    assert "train energy (ESTIMATE)  : 0.002000 kWh" in lines
    assert "machine cost             : 0.0040 EUR; 0.0060 EUR without the switch (estimate)" in lines
    assert "electricity cost" not in lines  # no price given
    assert "note                     : train energy is an ESTIMATE" in lines
    assert "results                  : out/r.json" in lines


def test_summary_and_card_without_a_switch_or_energy():
    results = results_for(None, energy_estimated=None)
    lines = "\n".join(summary_lines(results))
    assert "critical period          : not detected (never()); 4 copies throughout" in lines
    assert "saved 0.0 %" in lines and "train energy             : not tracked" in lines
    card = model_card_section(results)
    assert "did not fire" in card and "kWh" not in card


def test_model_card_section_labels_measured_derived_and_estimates():
    card = model_card_section(results_for(4), results_file="my_results.json")
    assert card.startswith(CARD_BEGIN)
    assert "ended the critical period at optimizer step 4 of 8" in card
    assert "| training rows (measured; derived) | 320 | 512 | 37.5 % |" in card
    assert "train energy, kWh (codecarbon, ESTIMATE; estimate)" in card
    assert "Energy: ESTIMATE (no RAPL power counter, no GPU)" in card
    assert "`eval_accuracy` 0.9000" in card and "`my_results.json`" in card


def test_card_shows_the_plot_and_the_emissions_and_summary_names_the_metric():
    results = results_for(4)
    results["energy"]["train"].update(emissions_kg=0.0012, energy_kwh=0.002, country_iso_code="FRA")
    results["energy"]["eval"] = {"estimated": True, "note": "x", "emissions_kg": 0.0001, "energy_kwh": 0.0002,
                                 "country_iso_code": "FRA"}  # fmt: skip
    card = model_card_section(results, plot_file="dynamics.png")
    assert "Emissions (codecarbon, electricity mix of FRA) (ESTIMATE): train 0.001200 kg CO2eq (0.002000 kWh); " in card
    assert "eval 0.000100 kg CO2eq" in card and "](dynamics.png)" in card
    assert "](" not in model_card_section(results_for(4))  # no plot written, none linked
    results["run"] = {"metric": {"name": "glue", "config_name": "sst2", "source": "local", "hub_error": "offline"}}
    lines = "\n".join(summary_lines(results))
    assert "metric                   : glue/sst2, the copy shipped with hf_critical (the Hub module did not load)" in lines
    results["run"]["metric"].update(name="accuracy", config_name=None, source="hub", hub_error=None)
    assert "metric                   : accuracy, evaluate's Hub module" in "\n".join(summary_lines(results))


def test_k_schedule_segments():
    assert k_schedule(8, 3, 4, 1) == [{"from_step": 1, "to_step": 3, "copies": 4}, {"from_step": 4, "to_step": 8, "copies": 1}]
    assert k_schedule(8, None, 4, 4) == [{"from_step": 1, "to_step": 8, "copies": 4}]
    assert k_schedule(8, 8, 4, 1) == [{"from_step": 1, "to_step": 8, "copies": 4}]  # fired at the last step
    assert k_schedule(8, 0, 4, 1) == [{"from_step": 1, "to_step": 8, "copies": 1}]
    assert k_schedule(0, None, 4, 4) == []


def test_update_model_card_appends_once_then_replaces(tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text("---\ntags: [x]\n---\n# my model\n", encoding="utf-8")
    update_model_card(readme, model_card_section(results_for(4)))
    update_model_card(readme, model_card_section(results_for(None)))
    text = readme.read_text(encoding="utf-8")
    assert text.startswith("---\ntags: [x]\n---\n# my model\n")
    assert text.count(CARD_BEGIN) == 1 and "did not fire" in text and "step 4 of 8" not in text
    fresh = tmp_path / "new" / "README.md"
    fresh.parent.mkdir()
    update_model_card(fresh, model_card_section(results_for(4)))
    assert fresh.read_text(encoding="utf-8").startswith(CARD_BEGIN)


# ---- arguments and the Hub ----------------------------------------------------------------------------


def test_reporting_arguments_are_checked():
    assert ReportingArguments(energy_country_iso_code="fra").energy_country_iso_code == "FRA"
    with pytest.raises(ValueError, match="`energy_country_iso_code` must be a 3-letter"):
        ReportingArguments(energy_country_iso_code="France")
    with pytest.raises(ValueError, match="`price_per_kwh` must be a number >= 0"):
        ReportingArguments(price_per_kwh=-0.2)
    with pytest.raises(ValueError, match="`results_file` must be a file name"):
        ReportingArguments(results_file="../r.json")
    with pytest.raises(ValueError, match="`results_file` must end in .json"):
        ReportingArguments(results_file="r.txt")
    assert ReportingArguments(track_energy=False, energy_country_iso_code="??").track_energy is False


def test_defer_hub_push_takes_the_token_out_of_the_arguments(tmp_path):
    args = CriticalPeriodArguments(
        output_dir=str(tmp_path), push_to_hub=True, hub_token=ARG_TOKEN, hub_model_id="me/model", report_to=[]
    )
    request = defer_hub_push(args)
    assert (request.repo_id, request.token) == ("me/model", ARG_TOKEN)
    assert ARG_TOKEN not in repr(request)
    assert args.push_to_hub is False and args.hub_token is None
    no_push = CriticalPeriodArguments(output_dir=str(tmp_path), hub_token=ARG_TOKEN, report_to=[])
    assert defer_hub_push(no_push) is None and no_push.hub_token is None


def test_failed_push_names_the_local_folder_and_hides_the_token(tmp_path, monkeypatch):
    def refuse(self, repo_id, **kwargs):
        raise ConnectionError(f"401 Unauthorized for {repo_id} with token {self.token}")

    monkeypatch.setattr(huggingface_hub.HfApi, "create_repo", refuse)
    with pytest.raises(HubPushError) as info:
        push_outputs(HubPushRequest(repo_id="me/model", token=ARG_TOKEN), str(tmp_path))
    message = str(info.value)
    assert ARG_TOKEN not in message and info.value.__cause__ is None
    assert f"Everything is saved locally in {tmp_path}" in message
    assert "'me/model' failed (ConnectionError: 401 Unauthorized" in message
    assert f"hf upload me/model {tmp_path}" in message


def test_push_offline_fails_with_a_clear_message(tmp_path):
    """The real huggingface_hub, with HF_HUB_OFFLINE=1 as `make test` sets it: no network call is tried."""
    if not huggingface_hub.constants.HF_HUB_OFFLINE:
        pytest.skip("needs HF_HUB_OFFLINE=1 (as `make test` sets)")
    (tmp_path / "critical_period_results.json").write_text("{}", encoding="utf-8")
    with pytest.raises(HubPushError, match=f"Everything is saved locally in {tmp_path}") as info:
        push_outputs(HubPushRequest(repo_id="me/model", token=ARG_TOKEN), str(tmp_path))
    assert ARG_TOKEN not in str(info.value) and "hf upload me/model" in str(info.value)
    assert (tmp_path / "critical_period_results.json").read_text(encoding="utf-8") == "{}"


def test_push_uploads_the_folder_without_checkpoints(tmp_path, monkeypatch):
    calls = {}
    monkeypatch.setattr(huggingface_hub.HfApi, "create_repo", lambda self, repo_id, **kw: SimpleNamespace(repo_id=f"user/{repo_id}"))

    def upload_folder(self, **kwargs):
        calls.update(kwargs)
        return SimpleNamespace(commit_url="https://hub/commit/1")

    monkeypatch.setattr(huggingface_hub.HfApi, "upload_folder", upload_folder)
    out = tmp_path / "my-run"
    out.mkdir()
    assert push_outputs(HubPushRequest(repo_id=None), str(out)) == "https://hub/commit/1"
    assert calls["repo_id"] == "user/my-run" and calls["folder_path"] == str(out)
    assert "checkpoint-*" in calls["ignore_patterns"]
