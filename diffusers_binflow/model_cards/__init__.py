"""Model cards (README.md) of our pipelines: one renderer over the templates beside this file, used by the training
scripts (settings, metrics, pictures) and by a plain `push_to_hub` (what the pipeline's own config tells)."""

from importlib import resources
from pathlib import Path

from huggingface_hub import ModelCard, ModelCardData
from huggingface_hub.utils import HFValidationError, validate_repo_id

from ..flow import MAX_LIKELIHOOD_LOGIT

# Every card carries these tags: the library that loads the pipeline and this plugin (the Hub's filters use them).
BASE_TAGS = ["diffusers", "diffusers_binflow", "diffusers-binflow", "binary-flow-matching"]
# Template and Hub task of each pipeline class. A class-conditional image model has no Hub task of its own; it gets
# none rather than "unconditional-image-generation", which would be untrue.
KINDS = {
    "BinaryFlowPipeline": ("image.md", "unconditional-image-generation"),
    "BinaryFlowSequencePipeline": ("sequence.md", "text-generation"),
    "BinaryFlowMIMOPipeline": ("mimo.md", None),
}


def hub_id(value: str | None) -> str | None:
    """`value` if it names a Hub repo, None for a local path (cards must not carry a machine's paths)."""
    if value is None or Path(value).expanduser().exists() or Path(value).is_absolute():
        return None
    try:
        validate_repo_id(value)
    except HFValidationError:
        return None
    return value


def render_model_card(pipeline_class_name: str, *, repo_id: str, tags: list[str] = (), datasets=None,
                      base_model: str | None = None, conditional: bool = False, settings=(), metrics=None,
                      **template_values) -> str:
    """The README.md text of a `pipeline_class_name` repo: YAML metadata (library, licence, pipeline tag, tags,
    datasets and base model as Hub ids only) and the template's body. `settings` is a list of (option, value);
    `metrics` a dict; `template_values` fill the kind's own fields (see the templates)."""
    template, pipeline_tag = KINDS[pipeline_class_name]
    base_model = hub_id(base_model)
    datasets = [d for d in map(hub_id, datasets or []) if d] or None
    card_data = ModelCardData(library_name="diffusers", license="apache-2.0",
                              pipeline_tag=None if conditional else pipeline_tag,
                              tags=BASE_TAGS + list(tags), datasets=datasets, base_model=base_model)
    template_str = resources.files(__name__).joinpath(template).read_text(encoding="utf-8")
    return str(ModelCard.from_template(card_data, template_str=template_str, repo_id=repo_id, base_model=base_model,
                                       settings=list(settings), metrics=list((metrics or {}).items()),
                                       **template_values))


def settings_of(args, names) -> list[tuple[str, object]]:
    """The (option, value) rows of a training card, local paths reduced to their names."""
    return [(name, portable_value(getattr(args, name))) for name in names if getattr(args, name, None) is not None]


def portable_value(value):
    """`value`, or the last component of a local path (so no card or config names a folder of this machine)."""
    if isinstance(value, str) and hub_id(value) is None and (Path(value).is_absolute() or Path(value).exists()):
        return Path(value).name
    return value


def is_our_model_card(readme: Path) -> bool:
    """Whether `readme` is a card of ours (tagged `diffusers_binflow`), not e.g. diffusers' generic one."""
    return Path(readme).is_file() and "diffusers_binflow" in (ModelCard.load(readme).data.tags or [])


def image_sampler(pipeline) -> dict:
    """What an image pipeline's scheduler samples with, for its card: ``solver``, ``heun_first_step``, and the caps
    it puts on a likelihood-residual output's likelihood term, ``sampling_likelihood_cap`` (every step) and
    ``sampling_final_likelihood_cap`` (the last one), each None unless it binds (below `MAX_LIKELIHOOD_LOGIT`; the last
    one only where it differs from the every-step one), both read as the pipeline reads them
    (`BinaryFlowPipeline.readout`); the card then says how to read the likelihood in full."""
    prediction_type, _, cap = pipeline.readout()
    final_cap = pipeline.readout(final=True)[2]

    def binding(value):
        return value if prediction_type == "likelihood_residual" and value < MAX_LIKELIHOOD_LOGIT else None

    return {"sampling_likelihood_cap": binding(cap),
            "sampling_final_likelihood_cap": binding(final_cap) if final_cap != cap else None,
            "solver": pipeline.scheduler.config.get("solver", "euler"),
            "heun_first_step": bool(pipeline.scheduler.config.get("heun_first_step", False))}


def sequence_sampler(pipeline) -> dict:
    """What a sequence pipeline's scheduler samples with, for its card: the corrector's ``s_churn`` and the time
    grid's ``shift`` (a swapped-in scheduler without them runs neither)."""
    config = pipeline.scheduler.config
    return {"s_churn": config.get("s_churn", 0.0), "sampling_shift": config.get("shift", 1.0)}


def pipeline_model_card(pipeline, repo_id: str) -> str:
    """The card of a pipeline pushed without a training run: usage and what its components' configs say."""
    name = type(pipeline).__name__
    if name == "BinaryFlowPipeline":
        channels, height, _ = pipeline.sample_shape
        null_class = pipeline.config.null_class_label
        conditional = pipeline.num_class_embeds is not None
        return render_model_card(name, repo_id=repo_id, conditional=conditional,
                                 tags=["class-conditional"] if conditional else ["unconditional-image-generation"],
                                 channels=channels, resolution=height,
                                 num_classes=null_class if null_class is not None else pipeline.num_class_embeds,
                                 null_class_label=null_class, self_conditioning=pipeline.self_conditioning,
                                 guidance_scale=2.0, num_inference_steps=16, grid_file=None,
                                 **image_sampler(pipeline))
    if name == "BinaryFlowSequencePipeline":
        return render_model_card(name, repo_id=repo_id, tags=["discrete-diffusion"], num_inference_steps=16,
                                 self_conditioning=pipeline.self_conditioning, **sequence_sampler(pipeline))
    model = pipeline.model
    return render_model_card(name, repo_id=repo_id, tags=["mimo-detection"], num_tx=model.config.num_tx,
                             num_rx=model.config.num_rx, modulation=model.config.modulation,
                             num_bits=model.num_bits, num_inference_steps=1, ber_rows=None,
                             self_conditioning=pipeline.self_conditioning)
