"""Train the small CNN whose penultimate features the digit metrics use (`diffusers_binflow.metrics`).

    python train_scripts/train_digit_classifier.py          # CPU, about 2-3 minutes; writes the shipped weights

Data: the 9,000 bundled training digits binarized at grey level 128 (`Binarizer()`), with random shifts of up to
2 pixels; the 1,000 held-out digits are only used to report accuracy. Writes
``diffusers_binflow/metrics/digit_classifier.safetensors`` and ``digit_classifier.json`` (held-out accuracy,
command, wall time) unless --output_dir says otherwise.
"""

import argparse
import json
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from diffusers_binflow.data import Binarizer, load_bundled_digits
from diffusers_binflow.metrics.classifier import CLASSIFIER_FILE, DigitClassifier


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output_dir", default=str(CLASSIFIER_FILE.parent))
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--batch_size", type=int, default=128)
    parser.add_argument("--learning_rate", type=float, default=2e-3)
    parser.add_argument("--max_shift", type=int, default=2, help="Random shift in pixels (augmentation).")
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args(argv)


def binarized_split(split: str) -> tuple[torch.Tensor, torch.Tensor]:
    images, labels = load_bundled_digits(split)
    return Binarizer()(images)[:, None], torch.as_tensor(labels)


def random_shift(bits: torch.Tensor, max_shift: int, generator: torch.Generator) -> torch.Tensor:
    """Shift the whole batch by one random (dy, dx); digits sit in an empty border, so rolling loses no ink."""
    if max_shift == 0:
        return bits
    dy, dx = torch.randint(-max_shift, max_shift + 1, (2,), generator=generator).tolist()
    return torch.roll(bits, shifts=(dy, dx), dims=(2, 3))


@torch.no_grad()
def accuracy(model: DigitClassifier, bits: torch.Tensor, labels: torch.Tensor) -> float:
    model.eval()
    return (model(bits).argmax(1) == labels).float().mean().item()


def main(argv=None):
    args = parse_args(argv)
    start = time.time()
    torch.manual_seed(args.seed)
    generator = torch.Generator().manual_seed(args.seed)
    train_bits, train_labels = binarized_split("train")
    heldout_bits, heldout_labels = binarized_split("heldout")

    model = DigitClassifier()
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.learning_rate, weight_decay=1e-4)
    steps = args.epochs * -(-len(train_bits) // args.batch_size)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, args.learning_rate, total_steps=steps)
    for epoch in range(args.epochs):
        model.train()
        order = torch.randperm(len(train_bits), generator=generator)
        for batch in order.split(args.batch_size):
            logits = model(random_shift(train_bits[batch], args.max_shift, generator))
            loss = F.cross_entropy(logits, train_labels[batch])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            schedule.step()
        print(f"epoch {epoch + 1}/{args.epochs}: last loss {loss.item():.4f}, "
              f"held-out accuracy {accuracy(model, heldout_bits, heldout_labels):.4f}", flush=True)

    heldout_accuracy = accuracy(model, heldout_bits, heldout_labels)
    output_dir = Path(args.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(output_dir / CLASSIFIER_FILE.name))
    info = {
        "heldout_accuracy": round(heldout_accuracy, 4),
        "train_accuracy": round(accuracy(model, train_bits, train_labels), 4),
        "data": "bundled digits, 9000 train / 1000 held-out, binarized at grey level 128",
        "command": " ".join([
            "python train_scripts/train_digit_classifier.py", *(sys.argv[1:] if argv is None else argv)]),
        "wall_time_s": round(time.time() - start, 1),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
    }
    (output_dir / CLASSIFIER_FILE.with_suffix(".json").name).write_text(json.dumps(info, indent=2) + "\n")
    print(json.dumps(info, indent=2))


if __name__ == "__main__":
    main()
