"""Renders the README's pictures of the Python API (docs/overlay.png, docs/plot.png), with the README's own code.

    python docs/readme_images.py

A tiny random-weight LLaVA (``mmx_fast.testing``; nothing downloads) on the bundled photo with a forced answer:
the maps show the API at work, not where a trained model looks. LLaVA centre-crops, so the region the model saw
is outlined and the sides of the photo have no map (NaN in ``upsampled``).
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
from PIL import Image  # noqa: E402

from mmx_fast import explain_fast  # noqa: E402
from mmx_fast.testing import tiny_model  # noqa: E402

DOCS = Path(__file__).resolve().parent
PHOTO = DOCS.parent / "mmx_fast" / "assets" / "grace_hopper.jpg"


def main() -> None:
    model, processor = tiny_model("llava", seed=0)
    image = Image.open(PHOTO).convert("RGB").resize((320, 240))  # a wide photo: LLaVA sees its centre square
    exp = explain_fast(model, processor, image, "Who is in the picture?", answer="A woman in a navy uniform.")

    # --- the README's code, as printed there ---
    m = exp.upsampled(1)  # float32 [240, 320] at the image's size, NaN outside the centre crop
    exp.overlay(1, label=True, colorbar=True, colormap="magma").save(DOCS / "overlay.png")
    fig = exp.plot([1, 3, 5], cmap="magma", alpha=0.6)
    fig.savefig(DOCS / "plot.png", dpi=80, bbox_inches="tight")
    plt.close(fig)
    print(m.shape, f"{(m != m).mean():.0%} of the pixels outside what the model saw")


if __name__ == "__main__":
    main()
