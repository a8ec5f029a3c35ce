"""Model cards for trained MIMO detectors (rendered from the repo's `model_card_template_mimo.md`)."""

from huggingface_hub import ModelCard, ModelCardData

# The training options a MIMO model card reports, in this order.
CARD_SETTINGS = ("num_tx", "num_rx", "modulation", "snr_db_min", "snr_db_max", "hidden_size", "num_layers",
                 "num_heads", "prediction_type", "loss_space", "loss_type", "timestep_sampling", "v_clamp",
                 "weighting_max", "train_batch_size", "max_train_steps", "learning_rate", "lr_scheduler", "use_ema",
                 "seed", "solver", "num_inference_steps")


def render_mimo_model_card(template: str, *, args, repo_id: str, num_bits: int, ber_table: dict, metrics: dict,
                           eval_description: str) -> str:
    """The README.md text: YAML metadata and a body with usage, settings, the BER table and the final metrics.

    `ber_table` maps a detector name to ``{snr_db: ber}``; `args` holds the training script's options."""
    card_data = ModelCardData(library_name="diffusers", license="apache-2.0",
                              tags=["diffusers", "diffusers_binflow", "binary-flow-matching", "mimo-detection",
                                    "diffusers-training"])
    detectors = list(ber_table)
    snrs = sorted({snr for results in ber_table.values() for snr in results})
    rows = [[f"{snr:g}"] + [f"{ber_table[name][snr]:.2e}" if snr in ber_table[name] else "-" for name in detectors]
            for snr in snrs]
    settings = [(name, getattr(args, name)) for name in CARD_SETTINGS if getattr(args, name, None) is not None]
    card = ModelCard.from_template(
        card_data, template_str=template, repo_id=repo_id, num_tx=args.num_tx, num_rx=args.num_rx,
        modulation=args.modulation, num_bits=num_bits, num_inference_steps=args.num_inference_steps,
        settings=settings, detectors=detectors, ber_rows=rows, eval_description=eval_description,
        metrics=list(metrics.items()))
    return str(card)
