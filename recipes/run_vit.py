#!/usr/bin/env python
"""Fine-tune (or train from config) an image classifier with k augmented copies per image until the critical period ends.

scikit-learn's digits, a tiny ViT built from config, offline on a CPU (about a minute on 2 cores):

    python recipes/run_vit.py --dataset_name sklearn_digits --train_val_split 1297 \
        --config_overrides "patch_size=2,hidden_size=64,num_hidden_layers=4,num_attention_heads=4,intermediate_size=128" \
        --augment_policy affine --augment_copies 4 --num_train_epochs 40 --per_device_train_batch_size 64 \
        --learning_rate 3e-3 --weight_decay 0.05 --warmup_steps 0.05 --lr_scheduler_type cosine \
        --dynamics_every_n_steps 2 --detector_window 1ep --detector_warmup 2ep --output_dir outputs/vit_digits

The same run from one YAML (or JSON) file holding every argument, as ``make demo`` does:
``python recipes/run_vit.py recipes/configs/demo_digits.yaml``.

CIFAR-10 from ``.npz`` files (``x`` N x H x W x C uint8, ``y`` labels, optional ``class_names``):
``--train_file ../shared/data/cifar10/train_1000_per_class.npz --validation_file ../shared/data/cifar10/test.npz``;
an image folder, one sub-folder per class (``train/cat/001.png``): ``--train_dir <folder>``
(``--validation_dir <folder>``, else ``--train_val_split`` is held out); a Hub data set:
``--dataset_name <name>`` with ``--image_column_name`` / ``--label_column_name``. A pretrained
model: ``--model_name_or_path <folder or Hub id>`` (its image processor gives the normalisation);
a small ViT from scratch: ``--config_name vit-digits|vit-cifar|vit-tiny`` (see
``hf_critical.experiments.vit_configs``) or ``--config_overrides``.

Until the detector fires every image gives k = ``--augment_copies`` (default 4) rows augmented
with ``--augment_policy`` (trivial, rand, crop_flip, affine; by default on the training device);
afterwards each image gives one row (one augmented copy by default; ``--augment_after_switch clean``:
the clean image). ``--detector never`` keeps k copies to the end (the
baseline); ``--augment_policy none --augment_copies 1`` trains without augmentation.

Writes to ``--output_dir``: the model and image processor, ``critical_period_results.json``
(measured and derived numbers, secrets redacted), ``dynamics.jsonl`` / ``dynamics.png``, a
``README.md`` model card with an hf_critical section, and prints a summary. Energy comes from
codecarbon (estimates on machines without RAPL or a GPU, and the outputs say so). With
``--push_to_hub`` the output folder is pushed once, after all of it is written.
"""

from __future__ import annotations

import logging
import sys
from dataclasses import dataclass, field

import datasets
import transformers
from transformers import (
    AutoConfig,
    AutoImageProcessor,
    AutoModelForImageClassification,
    set_seed,
)

from hf_critical import CriticalPeriodArguments, CriticalPeriodTrainer, ImageAugmentationCollator
from hf_critical.augmentation import IMAGE_POLICIES
from hf_critical.experiments import (
    SKLEARN_DIGITS,
    SMALL_MODEL_CONFIGS,
    UNREADABLE_IMAGES,
    ImageTransform,
    ReportingArguments,
    RobustnessArguments,
    TrainingCostCallback,
    accuracy_compute_metrics,
    check_images,
    defer_hub_push,
    finish_run,
    load_image_folder,
    load_npz_images,
    load_sklearn_digits,
    normalized_value_range,
    parse_recipe_arguments,
    resume_argument,
    robustness_for_images,
    select_classes,
    small_model_config,
    split_train_validation,
    track_energy,
)

logger = logging.getLogger(__name__)

AUGMENT_POLICIES = (*IMAGE_POLICIES, "none")


@dataclass
class ModelArguments:
    model_name_or_path: str | None = field(
        default=None,
        metadata={"help": "Pretrained model folder or Hub id; leave unset to train a new model from `model_type`."},
    )
    model_type: str = field(default="vit", metadata={"help": "Model type built from config when no model is given."})
    config_name: str | None = field(
        default=None,
        metadata={
            "help": f"A named small model to train from scratch ({', '.join(SMALL_MODEL_CONFIGS)}), or a config name or "
            "path (Hub id or folder): with `model_name_or_path` the config to load it with, else a new model's config."
        },
    )
    config_overrides: str | None = field(
        default=None,
        metadata={"help": "Config settings for a new model, e.g. 'patch_size=2,hidden_size=64,num_hidden_layers=4'."},
    )
    image_processor_name: str | None = field(
        default=None, metadata={"help": "Image processor name or path, if not the model's."}
    )
    cache_dir: str | None = field(default=None, metadata={"help": "Where to store models downloaded from the Hub."})
    model_revision: str = field(default="main", metadata={"help": "Model version: branch, tag or commit id."})
    ignore_mismatched_sizes: bool = field(
        default=False, metadata={"help": "Load a model whose classifier head has another number of labels."}
    )
    new_classifier: bool = field(
        default=False,
        metadata={
            "help": "Start the pretrained model's classifier head from new random weights (fine-tuning on other "
            "classes, even when their number matches the pretraining's)."
        },
    )

    def __post_init__(self):
        if self.model_name_or_path is not None and self.config_overrides is not None:
            raise ValueError("`config_overrides` applies to a new model only: drop it or `model_name_or_path`")
        if self.model_name_or_path is not None and self.config_name in SMALL_MODEL_CONFIGS:
            raise ValueError(
                f"`config_name` {self.config_name!r} names a small ViT trained from scratch: drop it or `model_name_or_path`"
            )


@dataclass
class DataTrainingArguments:
    dataset_name: str | None = field(
        default=None, metadata={"help": f"'{SKLEARN_DIGITS}' (offline), or a Hub image data set, if no files."}
    )
    dataset_config_name: str | None = field(default=None, metadata={"help": "Configuration of the Hub data set."})
    train_file: str | None = field(default=None, metadata={"help": "Training images: an .npz with 'x' and 'y'."})
    validation_file: str | None = field(default=None, metadata={"help": "Validation images: an .npz with 'x' and 'y'."})
    train_dir: str | None = field(
        default=None, metadata={"help": "Training images in a folder, one sub-folder per class (<dir>/<class>/<image>)."}
    )
    validation_dir: str | None = field(
        default=None, metadata={"help": "Validation images in a folder laid out like `train_dir`."}
    )
    unreadable_images: str = field(
        default="error",
        metadata={
            "help": "Image folders are decoded once before training; a file that cannot be read stops the run with "
            "its name ('error') or is left out and counted ('skip')."
        },
    )
    train_val_split: float = field(
        default=0.15,
        metadata={
            "help": "Held out for evaluation when the data has no validation split: a fraction in (0, 1) or a count "
            "(>= 1). Split with the training seed."
        },
    )
    image_column_name: str = field(default="image", metadata={"help": "Image column of a Hub data set."})
    label_column_name: str = field(default="label", metadata={"help": "Label column of a Hub data set."})
    max_train_samples: int | None = field(
        default=None, metadata={"help": "Keep N training examples, drawn at random with the training seed."}
    )
    max_eval_samples: int | None = field(
        default=None, metadata={"help": "Keep N validation examples, drawn at random with the training seed."}
    )
    classes: str | None = field(
        default=None,
        metadata={
            "help": "Keep only these labels, comma-separated ('5,6,7,8,9'), in training and evaluation, relabelled "
            "0..n-1 in that order (pretrain on some classes, fine-tune on the others)."
        },
    )
    augment_policy: str = field(
        default="trivial", metadata={"help": f"Augmentation of the copies: one of {list(AUGMENT_POLICIES)}."}
    )
    augment_on_device: bool = field(
        default=True, metadata={"help": "Augment on the training device (else in the data loader, on the CPU)."}
    )

    def __post_init__(self):
        sources = [name for name in ("dataset_name", "train_file", "train_dir") if getattr(self, name) is not None]
        if not sources:
            raise ValueError(
                f"one of `dataset_name` (e.g. '{SKLEARN_DIGITS}'), `train_file` (.npz) or `train_dir` (an image folder) "
                "is required"
            )
        if len(sources) > 1:
            raise ValueError(f"give one of `dataset_name`, `train_file` or `train_dir`, not {sources}")
        if self.validation_file is not None and self.train_file is None:
            raise ValueError("`validation_file` goes with `train_file` (for an image folder use `validation_dir`)")
        if self.unreadable_images not in UNREADABLE_IMAGES:
            raise ValueError(f"`unreadable_images` must be one of {list(UNREADABLE_IMAGES)}, got {self.unreadable_images!r}")
        if self.validation_dir is not None and self.train_dir is None:
            raise ValueError("`validation_dir` goes with `train_dir`")
        for name in ("train_file", "validation_file"):
            path = getattr(self, name)
            if path is not None and not path.endswith(".npz"):
                raise ValueError(f"`{name}` must be an .npz file holding 'x' and 'y', got {path!r}")
        if not (0 < self.train_val_split < 1 or (self.train_val_split >= 1 and float(self.train_val_split).is_integer())):
            raise ValueError(
                f"`train_val_split` must be a fraction in (0, 1) or a whole count >= 1, got {self.train_val_split!r}"
            )
        for name in ("max_train_samples", "max_eval_samples"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"`{name}` must be >= 1, got {value!r}")
        if self.classes is not None:
            try:
                self.class_list = [int(c) for c in str(self.classes).split(",")]
            except ValueError:
                raise ValueError(f"`classes` is a comma-separated list of integer labels, got {self.classes!r}") from None
        if self.augment_policy not in AUGMENT_POLICIES:
            raise ValueError(f"`augment_policy` must be one of {list(AUGMENT_POLICIES)}, got {self.augment_policy!r}")


def unchanged(images):
    """The "none" policy."""
    return images


def parse_arguments(argv: list[str] | None):
    return parse_recipe_arguments(
        (ModelArguments, DataTrainingArguments, ReportingArguments, RobustnessArguments, CriticalPeriodArguments), argv
    )


def load_splits(data_args: DataTrainingArguments, cache_dir: str | None, seed: int):
    """(train, validation, unreadable files left out): data sets with an image column and a ClassLabel column.

    Images read from a folder are decoded once here, so a corrupt file is named before training.
    """
    train, validation = _splits(data_args, cache_dir, seed)
    if data_args.train_dir is None:
        return train, validation, []
    train, skipped = check_images(train, data_args.train_dir, data_args.unreadable_images)
    validation, more = check_images(validation, data_args.validation_dir or data_args.train_dir, data_args.unreadable_images)
    if skipped or more:
        logger.warning("Left out %d unreadable image file(s): %s", len(skipped) + len(more), (skipped + more)[:10])
    return train, validation, skipped + more


def _splits(data_args: DataTrainingArguments, cache_dir: str | None, seed: int):
    if data_args.dataset_name == SKLEARN_DIGITS:
        return split_train_validation(load_sklearn_digits(), _split_size(data_args.train_val_split), seed)
    if data_args.train_file is not None:
        train = load_npz_images(data_args.train_file)
        if data_args.validation_file is not None:
            return train, load_npz_images(data_args.validation_file)
        return split_train_validation(train, _split_size(data_args.train_val_split), seed)
    if data_args.train_dir is not None:
        train, validation = load_image_folder(data_args.train_dir, data_args.validation_dir, cache_dir=cache_dir)
        if validation is not None:
            return train, validation
        return split_train_validation(train, _split_size(data_args.train_val_split), seed)
    raw = datasets.load_dataset(data_args.dataset_name, data_args.dataset_config_name, cache_dir=cache_dir)
    raw = raw.rename_columns(
        {old: new for old, new in ((data_args.image_column_name, "image"), (data_args.label_column_name, "label")) if old != new}
    )
    for split in ("validation", "test"):
        if split in raw:
            return raw["train"], raw[split]
    return split_train_validation(raw["train"], _split_size(data_args.train_val_split), seed)


def random_subset(dataset, size: int | None, seed: int):
    """``size`` rows drawn with ``seed`` (all rows if None): image sets are often sorted by class, as CIFAR-10's npz files are."""
    if size is None:
        return dataset
    return dataset.shuffle(seed=seed).select(range(min(len(dataset), size)))


def _split_size(value: float) -> float | int:
    return int(value) if value >= 1 else value


def main(argv: list[str] | None = None) -> dict | None:
    model_args, data_args, reporting_args, robustness_args, training_args = parse_arguments(argv)
    robustness_args.attacks_for("image")  # an attack of the other modality fails here, before training

    logging.basicConfig(format="%(asctime)s - %(levelname)s - %(name)s - %(message)s", handlers=[logging.StreamHandler(sys.stdout)])
    log_level = training_args.get_process_log_level()
    logger.setLevel(log_level)
    datasets.utils.logging.set_verbosity(log_level)
    transformers.utils.logging.set_verbosity(log_level)

    push_request = defer_hub_push(training_args)
    copies = training_args.augment_copies if training_args.augment_copies is not None else 4
    if data_args.augment_policy == "none" and copies > 1:
        raise ValueError(f"`augment_policy='none'` would train on {copies} identical copies: set `augment_copies` to 1")
    set_seed(training_args.seed)

    train_dataset, eval_dataset, skipped_images = load_splits(data_args, model_args.cache_dir, training_args.seed)
    if "image" not in train_dataset.column_names or "label" not in train_dataset.column_names:
        raise ValueError(
            f"the training data needs an image and a label column; found {train_dataset.column_names} "
            "(set `image_column_name` / `label_column_name`)"
        )
    if data_args.classes is not None:
        train_dataset = select_classes(train_dataset, data_args.class_list)
        eval_dataset = select_classes(eval_dataset, data_args.class_list)
    train_dataset = random_subset(train_dataset, data_args.max_train_samples, training_args.seed)
    eval_dataset = random_subset(eval_dataset, data_args.max_eval_samples, training_args.seed)
    label_names = getattr(train_dataset.features["label"], "names", None)
    if label_names is None:
        raise ValueError(
            f"the label column must be a datasets.ClassLabel (class names), got {train_dataset.features['label']}"
        )
    labels = dict(
        num_labels=len(label_names),
        id2label=dict(enumerate(label_names)),
        label2id={name: i for i, name in enumerate(label_names)},
    )

    if model_args.model_name_or_path is not None:
        hub = dict(cache_dir=model_args.cache_dir, revision=model_args.model_revision)
        config = AutoConfig.from_pretrained(
            model_args.config_name or model_args.model_name_or_path, finetuning_task="image-classification", **labels, **hub
        )
        model = AutoModelForImageClassification.from_pretrained(
            model_args.model_name_or_path, config=config, ignore_mismatched_sizes=model_args.ignore_mismatched_sizes, **hub
        )
        if model_args.new_classifier:
            reset_classifier(model)
        image_processor = AutoImageProcessor.from_pretrained(model_args.image_processor_name or model_args.model_name_or_path, **hub)
    else:
        first = train_dataset[0]["image"]
        height, width, channels = _shape(first)
        if model_args.config_name in SMALL_MODEL_CONFIGS:
            config = small_model_config(model_args.config_name, height, channels, **labels)
        elif model_args.config_name is not None:
            try:
                config = AutoConfig.from_pretrained(model_args.config_name, cache_dir=model_args.cache_dir, **labels)
            except OSError as err:
                raise ValueError(
                    f"`config_name` {model_args.config_name!r} is neither a small ViT config or ResNet config ({', '.join(SMALL_MODEL_CONFIGS)}) "
                    f"nor a config folder or Hub id that loads ({type(err).__name__}: {str(err)[:200]})"
                ) from None
        else:
            config = AutoConfig.for_model(model_args.model_type, image_size=height, num_channels=channels, **labels)
        if model_args.config_overrides:
            config.update_from_string(model_args.config_overrides)
        if getattr(config, "image_size", height) % getattr(config, "patch_size", 1):
            raise ValueError(
                f"patch_size {config.patch_size} does not divide image_size {config.image_size}: "
                "set e.g. `--config_overrides patch_size=2`"
            )
        model = AutoModelForImageClassification.from_config(config)
        image_processor = (
            AutoImageProcessor.from_pretrained(model_args.image_processor_name)
            if model_args.image_processor_name
            else _new_image_processor(config.image_size, config.num_channels)
        )

    mean = list(image_processor.image_mean) if getattr(image_processor, "do_normalize", True) else None
    std = list(image_processor.image_std) if mean is not None else None
    transform = ImageTransform((config.image_size, config.image_size), mean, std, config.num_channels)
    train_dataset.set_transform(transform)
    eval_dataset.set_transform(transform)
    training_args.remove_unused_columns = False  # the transform reads the raw image column

    collator = ImageAugmentationCollator(
        policy=unchanged if data_args.augment_policy == "none" else data_args.augment_policy,
        copies=copies,
        on_device=data_args.augment_on_device,
        seed=training_args.seed,
        value_range=normalized_value_range(mean, std) if mean is not None else (0.0, 1.0),
    )
    compute_metrics = accuracy_compute_metrics()
    costs = TrainingCostCallback()
    trainer = CriticalPeriodTrainer(
        model=model,
        args=training_args,
        train_dataset=train_dataset,
        eval_dataset=eval_dataset,
        processing_class=image_processor,
        data_collator=collator,
        compute_metrics=compute_metrics,
        callbacks=[costs],
    )

    energy = dict(
        country_iso_code=reporting_args.energy_country_iso_code,
        enabled=reporting_args.track_energy,
        is_main_process=trainer.is_world_process_zero(),
    )
    with track_energy("train", **energy) as train_energy:
        train_result = trainer.train(resume_from_checkpoint=resume_argument(training_args.resume_from_checkpoint))
    trainer.save_model()
    train_metrics = dict(train_result.metrics, train_samples=len(train_dataset))
    trainer.log_metrics("train", train_metrics)
    trainer.save_metrics("train", train_metrics)
    trainer.save_state()

    with track_energy("eval", **energy) as eval_energy:
        eval_metrics = trainer.evaluate()
    eval_metrics["eval_samples"] = len(eval_dataset)
    trainer.log_metrics("eval", eval_metrics)
    trainer.save_metrics("eval", eval_metrics)

    robustness = None
    if robustness_args.robustness_eval and trainer.is_world_process_zero():
        robustness = robustness_for_images(
            trainer.model,
            eval_dataset,
            robustness_args,
            size=(config.image_size, config.image_size),
            num_channels=config.num_channels,
            mean=mean,
            std=std,
        )

    if data_args.train_dir is not None:
        data_name = {"train": data_args.train_dir, "validation": data_args.validation_dir}
        data_label = "an image folder"
    elif data_args.train_file is not None:
        data_name = {"train": data_args.train_file, "validation": data_args.validation_file}
        data_label = "npz images"
    else:
        data_name = data_label = data_args.dataset_name
    return finish_run(
        trainer,
        costs,
        title=f"{model.config.model_type} on {data_label}, k={copies} copies, detector {training_args.detector}",
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
            "recipe": "run_vit",
            "model": model_args.model_name_or_path or f"{model_args.config_name or model_args.model_type} from config",
            "parameters": model.num_parameters(),
            "data": data_name,
            "train_examples": len(train_dataset),
            "eval_examples": len(eval_dataset),
            "unreadable_images_skipped": len(skipped_images),
            "image_size": config.image_size,
            "augment_policy": data_args.augment_policy,
            "metric": compute_metrics.metric.describe(),
        },
        train_energy=train_energy,
        eval_energy=eval_energy,
        model_card_kwargs=dict(
            finetuned_from=model_args.model_name_or_path,
            tasks="image-classification",
            dataset=data_args.dataset_name or f"local {data_label}",
        ),
        push_request=push_request,
        robustness=robustness,
    )


def reset_classifier(model) -> None:
    """New random weights for the classification head (``model.classifier``: a Linear, or a Sequential of layers)."""
    head = getattr(model, "classifier", None)
    layers = [m for m in head.modules() if hasattr(m, "reset_parameters")] if head is not None else []
    if not layers:
        raise ValueError(f"`new_classifier`: {type(model).__name__} has no `classifier` layer with parameters to reset")
    for layer in layers:
        layer.reset_parameters()


def _shape(image) -> tuple[int, int, int]:
    """(height, width, channels) of a raw image (array, nested list or PIL)."""
    if hasattr(image, "size") and hasattr(image, "mode"):  # PIL
        return image.size[1], image.size[0], 1 if image.mode in ("L", "1") else 3
    import numpy as np

    array = np.asarray(image)
    return array.shape[0], array.shape[1], array.shape[2] if array.ndim == 3 else 1


def _new_image_processor(size: int, channels: int):
    """ViT's normalisation (mean 0.5, std 0.5 per channel) at the model's size, for a model trained from scratch."""
    # The PIL processor needs no torchvision (which this project cannot install beside its CPU torch).
    processor_class = getattr(transformers, "ViTImageProcessorPil", None) or transformers.ViTImageProcessor
    return processor_class(
        size={"height": size, "width": size}, image_mean=[0.5] * channels, image_std=[0.5] * channels
    )


if __name__ == "__main__":
    main()
