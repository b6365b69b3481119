"""hf_critical.experiments: what the recipes, the study and the benchmarks need beyond the core.

Data loaders (GLUE files, images), the small model configs, scoring through `evaluate`, energy
(codecarbon), the without-switch counterfactual (savings), adversarial robustness, the results
JSON, model card, redaction and Hub push of a recipe run, and the synthetic detector bench. The
core (`hf_critical`) never imports this package; its optional dependencies come with the extras
(``pip install 'hf-critical[experiments]'``, ``[text]``, ``[images]``), and each module imports
them only in the function that needs them (`hf_critical.extras`)::

    from hf_critical.experiments import ReportingArguments, finish_run, track_energy

Names are imported lazily, on first use, as in `hf_critical`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .._modules import lazy_exports

#: Public name -> the submodule that defines it (every name in the submodules' ``__all__``).
_EXPORTS = {
    "parse_recipe_arguments": "cli",
    "resume_argument": "cli",
    "KNEE_FRACTION": "detector_bench",
    "MULTI_PAIR_NOISE": "detector_bench",
    "SINGLE_PAIR_NOISE": "detector_bench",
    "Plan": "detector_bench",
    "Stream": "detector_bench",
    "detectable_slope": "detector_bench",
    "linear": "detector_bench",
    "noisy_decay": "detector_bench",
    "noisy_trend": "detector_bench",
    "power_law": "detector_bench",
    "saturating": "detector_bench",
    "simulate": "detector_bench",
    "sqrt_growth": "detector_bench",
    "EnergyMeasurement": "energy",
    "EnergyReport": "energy",
    "is_codecarbon_available": "energy",
    "power_counters": "energy",
    "require_codecarbon": "energy",
    "track_energy": "energy",
    "validate_country_iso_code": "energy",
    "METRIC_MODULES": "evaluation",
    "ComputeMetrics": "evaluation",
    "LoadedMetric": "evaluation",
    "accuracy_compute_metrics": "evaluation",
    "glue_compute_metrics": "evaluation",
    "load_local_metric": "evaluation",
    "load_metric": "evaluation",
    "metric_module_path": "evaluation",
    "finish_run": "finish",
    "FILE_EXTENSIONS": "glue",
    "GLUE_TASKS": "glue",
    "GlueTask": "glue",
    "get_glue_task": "glue",
    "load_glue_files": "glue",
    "read_glue_file": "glue",
    "HubPushError": "hub",
    "HubPushRequest": "hub",
    "defer_hub_push": "hub",
    "push_outputs": "hub",
    "SKLEARN_DIGITS": "image_data",
    "UNREADABLE_IMAGES": "image_data",
    "ImageTransform": "image_data",
    "check_images": "image_data",
    "load_image_folder": "image_data",
    "load_npz_images": "image_data",
    "load_sklearn_digits": "image_data",
    "normalized_value_range": "image_data",
    "select_classes": "image_data",
    "split_train_validation": "image_data",
    "CARD_BEGIN": "model_card",
    "CARD_END": "model_card",
    "model_card_section": "model_card",
    "summary_lines": "model_card",
    "update_model_card": "model_card",
    "REDACTED": "redaction",
    "TOKEN_ENV_VARS": "redaction",
    "environment_secrets": "redaction",
    "is_secret_name": "redaction",
    "redact_secrets": "redaction",
    "METHOD": "results",
    "RECORDED_PACKAGES": "results",
    "RESULTS_FILE": "results",
    "ReportingArguments": "results",
    "build_results": "results",
    "jsonable": "results",
    "k_schedule": "results",
    "write_results": "results",
    "DEFAULT_IMAGE_EPSILONS": "robustness",
    "DEFAULT_TEXT_EPSILONS": "robustness",
    "IMAGE_ATTACKS": "robustness",
    "TEXT_ATTACKS": "robustness",
    "RobustnessArguments": "robustness",
    "attack_accuracy": "robustness",
    "epsilon_label": "robustness",
    "image_robustness": "robustness",
    "parse_epsilons": "robustness",
    "perturb_texts": "robustness",
    "projected_gradient_attack": "robustness",
    "robustness_columns": "robustness",
    "robustness_for_images": "robustness",
    "robustness_for_text": "robustness",
    "select_examples": "robustness",
    "text_robustness": "robustness",
    "COST_STATE_KEY": "savings",
    "DEFAULT_PRICE_PER_ACCELERATOR_HOUR": "savings",
    "DEFAULT_PRICE_PER_KWH": "savings",
    "TrainingCostCallback": "savings",
    "compute_savings": "savings",
    "estimate_cost": "savings",
    "SMALL_MODEL_CONFIGS": "vit_configs",
    "SMALL_RESNET_CONFIGS": "vit_configs",
    "SMALL_VIT_CONFIGS": "vit_configs",
    "small_model_config": "vit_configs",
    "small_vit_config": "vit_configs",
}

__all__ = sorted(_EXPORTS)


__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)


if TYPE_CHECKING:  # for type checkers and IDEs: the same names, imported eagerly
    from .cli import parse_recipe_arguments, resume_argument
    from .detector_bench import (
        KNEE_FRACTION,
        MULTI_PAIR_NOISE,
        SINGLE_PAIR_NOISE,
        Plan,
        Stream,
        detectable_slope,
        linear,
        noisy_decay,
        noisy_trend,
        power_law,
        saturating,
        simulate,
        sqrt_growth,
    )
    from .energy import (
        EnergyMeasurement,
        EnergyReport,
        is_codecarbon_available,
        power_counters,
        require_codecarbon,
        track_energy,
        validate_country_iso_code,
    )
    from .evaluation import (
        METRIC_MODULES,
        ComputeMetrics,
        LoadedMetric,
        accuracy_compute_metrics,
        glue_compute_metrics,
        load_local_metric,
        load_metric,
        metric_module_path,
    )
    from .finish import finish_run
    from .glue import FILE_EXTENSIONS, GLUE_TASKS, GlueTask, get_glue_task, load_glue_files, read_glue_file
    from .hub import HubPushError, HubPushRequest, defer_hub_push, push_outputs
    from .image_data import (
        SKLEARN_DIGITS,
        UNREADABLE_IMAGES,
        ImageTransform,
        check_images,
        load_image_folder,
        load_npz_images,
        load_sklearn_digits,
        normalized_value_range,
        select_classes,
        split_train_validation,
    )
    from .model_card import CARD_BEGIN, CARD_END, model_card_section, summary_lines, update_model_card
    from .redaction import REDACTED, TOKEN_ENV_VARS, environment_secrets, is_secret_name, redact_secrets
    from .results import (
        METHOD,
        RECORDED_PACKAGES,
        RESULTS_FILE,
        ReportingArguments,
        build_results,
        jsonable,
        k_schedule,
        write_results,
    )
    from .robustness import (
        DEFAULT_IMAGE_EPSILONS,
        DEFAULT_TEXT_EPSILONS,
        IMAGE_ATTACKS,
        TEXT_ATTACKS,
        RobustnessArguments,
        attack_accuracy,
        epsilon_label,
        image_robustness,
        parse_epsilons,
        perturb_texts,
        projected_gradient_attack,
        robustness_columns,
        robustness_for_images,
        robustness_for_text,
        select_examples,
        text_robustness,
    )
    from .savings import (
        COST_STATE_KEY,
        DEFAULT_PRICE_PER_ACCELERATOR_HOUR,
        DEFAULT_PRICE_PER_KWH,
        TrainingCostCallback,
        compute_savings,
        estimate_cost,
    )
    from .vit_configs import (
        SMALL_MODEL_CONFIGS,
        SMALL_RESNET_CONFIGS,
        SMALL_VIT_CONFIGS,
        small_model_config,
        small_vit_config,
    )
