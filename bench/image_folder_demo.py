"""A Waterbirds-shaped benchmark made from nothing, and a ResNet-18 trained on it by ERM:
what `[task] kind = "image_folder"` reads, for a trial, a study and an export by hand.

    .venv-vision/bin/python bench/image_folder_demo.py OUT [--per-group 40] [--epochs 4]

writes OUT/birds/ (PNG images and metadata.csv with Waterbirds' columns: img_filename,
y, split, place), OUT/resnet18_erm.pt (the trained model's state dict) and
OUT/image_folder.toml (a study file naming both, relative to itself). The label is where
a bright square sits (top left / bottom right, small and faint); the attribute is the
background's hue (red / blue), tied to the label in 95 % of the training images and
independent of it in val and test: a model trained by ERM leans on the hue. Needs
torchvision and Pillow. Then:

    hpo trial OUT/image_folder.toml
    hpo launch OUT/image_folder.toml --workers 2
    hpo export image_folder_demo --storage sqlite:///OUT/image_folder_demo.db
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import tomli_w
import torch
import torch.nn.functional as F


def write_images(root: Path, per_group: int, size: int, seed: int) -> None:
    from PIL import Image

    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True, exist_ok=True)
    rows = ["img_id,img_filename,y,split,place"]
    plan = []
    for _ in range(12 * per_group):  # train: biased
        y = int(rng.integers(2))
        plan.append((0, y, y if rng.random() < 0.95 else 1 - y))
    for split in (1, 2):
        plan += [(split, y, p) for y in (0, 1) for p in (0, 1) for _ in range(per_group)]
    for i, (split, y, place) in enumerate(plan):
        pixels = rng.normal(0.35, 0.2, (size, size, 3))
        pixels[..., 0 if place == 0 else 2] += 0.3
        s = size // 4
        at = (slice(3, 3 + s), slice(3, 3 + s)) if y == 0 else (slice(-3 - s, -3),) * 2
        pixels[at] += 0.12
        name = f"images/{i:05d}.png"
        Image.fromarray((np.clip(pixels, 0, 1) * 255).astype("uint8")).save(root / name)
        rows.append(f"{i},{name},{y},{split},{place}")
    (root / "metadata.csv").write_text("\n".join(rows) + "\n")


def train_erm(root: Path, size: int, epochs: int, seed: int) -> torch.nn.Module:
    """ResNet-18 on the biased train split, by plain cross-entropy (ERM)."""
    import torchvision

    from hpo.data.image_files import ImageFiles
    from hpo.data.metadata_csv import read_table

    table = read_table(root / "metadata.csv", "metadata")
    train = [r for r in table.rows if r["split"] == "0"]
    y = np.array([int(r["y"]) for r in train])
    data = ImageFiles(
        [root / r["img_filename"] for r in train],
        y,
        y,
        y,
        size=size,
        resize=size,
        mean=(0.485, 0.456, 0.406),
        std=(0.229, 0.224, 0.225),
    )
    x = torch.stack([data.image(i) for i in range(len(data))])
    targets = torch.from_numpy(y)
    torch.manual_seed(seed)
    model = torchvision.models.resnet18(num_classes=2)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    gen = torch.Generator().manual_seed(seed)
    model.train()
    for epoch in range(epochs):
        perm = torch.randperm(len(x), generator=gen)
        for start in range(0, len(x), 32):
            idx = perm[start : start + 32]
            loss = F.cross_entropy(model(x[idx]), targets[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
        print(f"epoch {epoch}: loss {loss.item():.3f}")
    return model.eval()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--per-group", type=int, default=40)
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    out = args.out.resolve()
    write_images(out / "birds", args.per_group, args.size, args.seed)
    model = train_erm(out / "birds", args.size, args.epochs, args.seed)
    torch.save(model.state_dict(), out / "resnet18_erm.pt")
    study = {
        "study": {"name": "image_folder_demo", "objectives": ["worst_group"], "n_trials": 6},
        "storage": {"url": f"sqlite:///{out / 'image_folder_demo.db'}"},
        "sampler": {"name": "tpe", "seed": 0, "options": {"n_startup_trials": 3}},
        "pruner": {"name": "none"},
        "task": {
            "kind": "image_folder",
            "root": "birds",
            "metadata": "birds/metadata.csv",
            "arch": "resnet18",
            "weights": "resnet18_erm.pt",
            "image_size": args.size,
            "resize": args.size,
            "label_names": ["landbird", "waterbird"],
            "attribute_names": ["land", "water"],
            "batch_size": 64,
        },
        "params": {
            "n_components": 64,
            "top_k": 4,
            "steps": 1000,
            "eval_every": 250,
            "project_faithful": True,
            "ablate": "fitted",
            "max_components": 32,
            "fit_steps": 600,
            "alpha_max": 3.0,
            "alpha_steps": 31,
        },
        "search": {
            "lr": {"low": 3e-4, "high": 5e-3, "log": True},
            "faithful_weight": {"low": 0.5, "high": 10.0, "log": True},
        },
    }
    (out / "image_folder.toml").write_text(tomli_w.dumps(study))
    print(f"wrote {out / 'image_folder.toml'}")


if __name__ == "__main__":
    main()
