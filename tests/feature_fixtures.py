"""A tiny prepared data set with item metadata, and tiny random-weight BERT / ViT / AST models saved with
``save_pretrained``, for the feature extraction and loading tests (no model hub needed)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from tests.helpers import make_interactions, write_prepared

# Dense items 0..5; original ids deliberately not in dense order. Item 2 has no title and no genres
# (no text, no metadata); item 5 has no year and a pseudo-genre that counts as none.
ITEMS = pd.DataFrame({
    "item": range(6),
    "original_id": [30, 10, 50, 20, 40, 60],
    "title": ["Toy Story (1995)", "Heat, The (1995)", "", "Toy Heat Story (2000)", "The Story (1990)", "Crime Story"],
    "genres": ["Animation|Comedy", "Action|Crime", "", "Comedy|Action", "Comedy", "Crime|(no genres listed)"],
})
VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", ".", ",", "(", ")", "toy", "story", "heat", "the", "action",
         "comedy", "animation", "crime", "a", "plot", "about", "toys", "cops", "and", "robbers"] + list("0123456789")


def make_data_dir(root: Path, items: pd.DataFrame = ITEMS, name: str = "synthetic") -> Path:
    """A prepared data directory (docs/design.md, section 2) whose items.csv carries ``items``."""
    n = len(items)
    rows = [(u, i, 4.0, t) for t, (u, i) in enumerate((u, i) for u in range(3) for i in range(n) if (u + i) % 2 == 0)]
    out = write_prepared(make_interactions(rows, n_users=3, n_items=n), Path(root), name=name)
    items.to_csv(out / "items.csv", index=False)
    return out


def make_models(root: Path) -> dict[str, Path]:
    """Random-weight BERT (2 layers, hidden 32), ViT (32x32 images, 8x8 patches) and AST (16 mel bins,
    64 frames) saved with their tokenizer / processor / feature extractor, as a hub checkpoint would be."""
    import torch
    import transformers
    from transformers import (ASTConfig, ASTFeatureExtractor, ASTModel, BertConfig, BertModel, BertTokenizer, ViTConfig,
                              ViTModel)

    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    torch.manual_seed(0)
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    small = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64)
    (root / "vocab.txt").write_text("\n".join(VOCAB) + "\n")
    BertModel(BertConfig(vocab_size=len(VOCAB), max_position_embeddings=64, **small)).save_pretrained(root / "bert")
    BertTokenizer(str(root / "vocab.txt")).save_pretrained(root / "bert")
    ViTModel(ViTConfig(image_size=32, patch_size=8, **small)).save_pretrained(root / "vit")
    # Without torchvision the PIL-backed processor is the one AutoImageProcessor gives back anyway.
    processor = getattr(transformers, "ViTImageProcessorPil", transformers.ViTImageProcessor)
    processor(size={"height": 32, "width": 32}).save_pretrained(root / "vit")
    ast = ASTModel(ASTConfig(num_mel_bins=16, max_length=64, **small))
    with torch.no_grad():  # AST starts its [CLS], distillation and position embeddings at zero: tell them apart
        for p in ast.embeddings.parameters():
            p.normal_(0.0, 0.5)
    ast.save_pretrained(root / "ast")
    ASTFeatureExtractor(num_mel_bins=16, max_length=64, sampling_rate=16000).save_pretrained(root / "ast")
    return {"text": root / "bert", "image": root / "vit", "audio": root / "ast"}


def solid_image(path: Path, rgb, size=(30, 40)) -> Path:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(sum(rgb))
    noise = rng.integers(0, 40, (size[1], size[0], 3))
    Image.fromarray(np.clip(np.asarray(rgb) + noise, 0, 255).astype(np.uint8)).save(path)
    return path
