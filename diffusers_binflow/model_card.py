"""Model cards for trained binary flow pipelines (rendered from the repo's `model_card_template.md`)."""

from huggingface_hub import ModelCard, ModelCardData


# The training options a model card reports, in this order.
CARD_SETTINGS = ("model_config", "prediction_type", "loss_space", "loss_type", "timestep_sampling", "logit_mean",
                 "logit_std", "v_clamp", "weighting_max", "bit_scale", "train_batch_size", "gradient_accumulation_steps", "learning_rate",
                 "lr_scheduler", "use_ema", "ema_max_decay", "mixed_precision", "seed", "solver",
                 "num_inference_steps", "binarize_threshold", "stochastic_binarization", "resolution")


def render_model_card(template: str, *, args, repo_id: str, metrics: dict, num_classes: int | None,
                      null_class_label: int | None, image_shape: tuple[int, int, int], grid_file: str) -> str:
    """The README.md text: YAML metadata (library, licence, tags, pipeline tag, datasets, base model) and a body
    with usage, the training settings and the final metrics. `args` holds the training script's options."""
    dataset = args.dataset_name or (None if args.train_data_dir else "mnist")
    card_data = ModelCardData(
        library_name="diffusers",
        license="apache-2.0",
        pipeline_tag="unconditional-image-generation",
        tags=["diffusers", "diffusers_binflow", "binary-flow-matching", "unconditional-image-generation",
              "diffusers-training"] + (["class-conditional"] if num_classes else []),
        datasets=[dataset] if dataset else None,
        base_model=args.pretrained_model_name_or_path,
    )
    settings = [(name, getattr(args, name)) for name in CARD_SETTINGS if getattr(args, name, None) is not None]
    card = ModelCard.from_template(
        card_data, template_str=template, repo_id=repo_id, channels=image_shape[0], resolution=image_shape[1],
        num_classes=num_classes, null_class_label=null_class_label, base_model=args.pretrained_model_name_or_path, grid_file=grid_file,
        guidance_scale=args.guidance_scale, num_inference_steps=args.num_inference_steps, settings=settings,
        metrics=list(metrics.items()))
    return str(card)
