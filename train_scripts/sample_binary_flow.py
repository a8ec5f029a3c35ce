"""Sample from a saved BinaryFlowPipeline (folder or Hub id): a grid of samples and a completion demo.

    python train_scripts/sample_binary_flow.py --pipeline digits-model --output_dir digits-model/samples_again

Writes `samples.png` (one row per class for a class-conditional model, else 8x8) and, for 28x28 single-channel
models, `completion.png`: held-out bundled digits with their lower half erased, then completed by the model
(rows: original, the kept part with the erased half in grey, three completions given the digit's class).
"""

import argparse
from pathlib import Path

import numpy as np
import PIL.Image
import torch
from diffusers.utils import make_image_grid

from diffusers_binflow import BinaryFlowMatchScheduler, BinaryFlowPipeline
from diffusers_binflow.data import from_bundled_digits


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pipeline", required=True, help="A saved pipeline folder or a Hub repo id.")
    parser.add_argument("--output_dir", required=True)
    parser.add_argument("--num_inference_steps", type=int, default=16)
    parser.add_argument("--guidance_scale", type=float, default=2.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--scale", type=int, default=3, help="Upscaling of the saved grids (nearest).")
    return parser.parse_args(argv)


def save_grid(images: list, rows: int, cols: int, path: Path, scale: int):
    grid = make_image_grid(images, rows=rows, cols=cols)
    grid.resize((grid.width * scale, grid.height * scale), resample=PIL.Image.NEAREST).save(path)
    print(f"Wrote {path}")


def main(args):
    output_dir = Path(args.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    pipe = BinaryFlowPipeline.from_pretrained(args.pipeline)
    num_classes = pipe.config.null_class_label
    rows = min(num_classes, 10) if num_classes else 8
    labels = None if num_classes is None else torch.arange(rows).repeat_interleave(8).tolist()
    images = pipe(batch_size=rows * 8, class_labels=labels, guidance_scale=args.guidance_scale if labels else 1.0,
                  num_inference_steps=args.num_inference_steps, generator=torch.Generator().manual_seed(args.seed)).images
    save_grid(images, rows, 8, output_dir / "samples.png", args.scale)

    if pipe.sample_shape != (1, 28, 28):
        return
    digits = from_bundled_digits("heldout")
    originals = torch.stack([digits[i]["bits"] for i in range(8)])
    labels = [digits[i]["label"] for i in range(8)]
    if not num_classes or max(labels) >= num_classes:  # not a digit model: complete through the null class
        labels = None
    mask = torch.zeros(1, 1, 28, 28)
    mask[..., 14:, :] = 1  # regenerate the lower half
    # Completion mixes best with stochastic steps (see BinaryFlowPipeline's docstring); they replace whatever
    # deterministic solver, first step or corrector the saved scheduler has, which they cannot be combined with.
    pipe.scheduler = BinaryFlowMatchScheduler.from_config(pipe.scheduler.config, solver="euler", heun_first_step=False,
                                                          s_churn=0.0, stochastic_sampling=True)
    completions = [pipe(batch_size=8, image=originals, mask_image=mask, class_labels=labels,
                        guidance_scale=args.guidance_scale if labels else 1.0,
                        num_inference_steps=args.num_inference_steps,
                        generator=torch.Generator().manual_seed(args.seed + k)).images for k in range(3)]
    shown = pipe.numpy_to_pil(torch.where(mask.bool(), 0.5, originals).permute(0, 2, 3, 1).numpy())
    originals = pipe.numpy_to_pil(originals.permute(0, 2, 3, 1).numpy())
    save_grid([*originals, *shown, *[i for c in completions for i in c]], 5, 8, output_dir / "completion.png",
              args.scale)
    kept = np.stack([np.asarray(i) for i in completions[0]])[:, :14] == np.stack([np.asarray(i) for i in originals])[:, :14]
    print(f"Known bits kept exactly: {bool(kept.all())}")


if __name__ == "__main__":
    main(parse_args())
