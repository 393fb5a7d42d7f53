"""Pretrained Hugging Face encoders behind ``extract_features.py``: BERT-style text, ViT-style image and
AST-style audio models, loaded with the real ``from_pretrained`` (a hub id or a local directory).

Each encoder turns a batch of item payloads into one float32 vector per item:
- text: a string -> the [CLS] token of the last hidden state (``cls``) or the attention-masked mean
  of its tokens (``mean``);
- image: a list of image files (one poster, or the frames of a video) -> each image encoded, pooled
  over the special token(s) (``cls``) or the patch tokens (``mean``), then averaged over the images;
- audio: one sound file -> decoded (libsndfile), mixed to mono, resampled (soxr) to the feature
  extractor's rate, cut into windows of the model's input length, each window encoded and pooled like
  an image, then averaged over the windows.

torch and transformers are imported only here, and only when a model is asked for, so the weight-free
extractors (and the tests of everything else) do not pay their import time.
"""
from __future__ import annotations

import abc
import hashlib
import re
from pathlib import Path

import numpy as np

from jaxrec.errors import InputError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
AUDIO_SUFFIXES = (".wav", ".flac", ".mp3", ".ogg")
DEFAULT_MAX_TEXT_LENGTH = 512


def one_line(e: BaseException, limit: int = 300) -> str:
    """An exception as one short line: library messages often span lines and carry long hints."""
    text = re.sub(r"\s+", " ", f"{type(e).__name__}: {e}").strip()
    return text if len(text) <= limit else text[:limit - 3] + "..."


def state_dict_sha256(model) -> str:
    """sha256 over the model's tensors (sorted names; name, dtype, shape and raw bytes of each).

    It identifies the weights whatever path or hub revision they were loaded from.
    """
    import torch

    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        t = t.detach().to("cpu").contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}\n".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def _quiet_transformers():
    """No load reports, progress bars or backend hints on stderr: bad input must give one line there."""
    import transformers

    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()


def _load(loader, model_id: str, what: str, expected: str):
    try:
        return loader.from_pretrained(model_id)
    except Exception as e:  # noqa: BLE001 - any failure to load is bad input here; --debug shows the cause
        raise InputError(model_id, f"cannot load the {what} ({one_line(e)}); expected {expected}") from e


class Encoder:
    """One loaded model: ``encode(payloads) -> float32 [len(payloads), dim]``."""

    modality: str

    def __init__(self, model_id: str, model, device, pooling: str, batch_size: int):
        import torch

        self.model_id, self.pooling, self.batch_size = model_id, pooling, batch_size
        self.weights_sha256 = state_dict_sha256(model)  # before .to(device): hashes the loaded bytes
        self.device = torch.device(device)
        self.model = model.to(self.device).eval()
        self.dim = int(model.config.hidden_size)
        self.info = {"model_type": getattr(model.config, "model_type", None), "hidden_size": self.dim}

    def _forward(self, **inputs):
        try:
            out = self.model(**{k: v.to(self.device) for k, v in inputs.items()})
            return out.last_hidden_state
        except Exception as e:  # noqa: BLE001 - a model of the wrong kind fails here, not at load time
            raise InputError(self.model_id, f"forward pass failed ({one_line(e)}); expected a {self.expected}") from e


class TextEncoder(Encoder):
    modality = "text"
    expected = "BERT-style text encoder (AutoModel + AutoTokenizer)"

    def __init__(self, model_id, device, pooling, batch_size, max_length=None):
        from transformers import AutoModel, AutoTokenizer

        self.tokenizer = _load(AutoTokenizer, model_id, "tokenizer", "a hub id or a directory with a tokenizer")
        model = _load(AutoModel, model_id, "text model", "a hub id or a directory saved with save_pretrained")
        super().__init__(model_id, model, device, pooling, batch_size)
        # The longest input the model takes: position embeddings bound it, and a tokenizer built from
        # a bare vocab file reports a huge model_max_length.
        limit = min(DEFAULT_MAX_TEXT_LENGTH, self.tokenizer.model_max_length,
                    getattr(model.config, "max_position_embeddings", DEFAULT_MAX_TEXT_LENGTH))
        if max_length is not None and max_length > limit:
            raise InputError("--max-length", f"{max_length} exceeds what {model_id} takes ({limit} tokens)")
        self.max_length = max_length or limit
        self.info["max_length"] = self.max_length

    def tokenize(self, texts: list[str]):
        return self.tokenizer(texts, padding=True, truncation=True, max_length=self.max_length, return_tensors="pt")

    def pool(self, hidden, attention_mask):
        if self.pooling == "cls":
            return hidden[:, 0]
        m = attention_mask.to(hidden.dtype).unsqueeze(-1)
        return (hidden * m).sum(1) / m.sum(1).clamp(min=1)

    def encode(self, texts: list[str]) -> np.ndarray:
        enc = self.tokenize(texts)
        hidden = self._forward(**enc)
        return self.pool(hidden, enc["attention_mask"].to(self.device)).float().cpu().numpy()


class _PatchEncoder(Encoder, abc.ABC):
    """Image and audio models whose last hidden state is [special tokens..., patch tokens...]."""

    def __init__(self, model_id, model, device, pooling, batch_size):
        super().__init__(model_id, model, device, pooling, batch_size)
        # ViT has one special token ([CLS]); AST (like DeiT) a [CLS] and a distillation token, which
        # its own pooler averages: ``cls`` pooling does the same.
        emb = getattr(model, "embeddings", None)
        self.n_special = 2 if getattr(emb, "distillation_token", None) is not None else 1
        self.info["special_tokens"] = self.n_special

    def pool(self, hidden):
        if self.pooling == "cls":
            return hidden[:, :self.n_special].mean(1)
        return hidden[:, self.n_special:].mean(1)

    @abc.abstractmethod
    def units(self, payload) -> list:
        """The inputs one item is made of (images, or audio windows)."""

    @abc.abstractmethod
    def forward_units(self, units: list):
        """Last hidden state of a chunk of units."""

    def encode(self, payloads: list) -> np.ndarray:
        """Mean over each item's units; units of the whole batch go through the model ``batch_size``
        at a time, so a long video or clip never holds more than one chunk of inputs in memory."""
        sums = np.zeros((len(payloads), self.dim), np.float64)
        counts = np.zeros(len(payloads), np.int64)
        chunk: list = []

        def flush():
            pooled = self.pool(self.forward_units([u for _, u in chunk])).float().cpu().numpy()
            for (i, _), row in zip(chunk, pooled):
                sums[i] += row
                counts[i] += 1
            chunk.clear()

        for i, payload in enumerate(payloads):
            for unit in self.units(payload):
                chunk.append((i, unit))
                if len(chunk) == self.batch_size:
                    flush()
        if chunk:
            flush()
        return (sums / np.maximum(counts, 1)[:, None]).astype(np.float32)


def read_image(path: Path):
    from PIL import Image

    try:
        with Image.open(path) as im:
            return im.convert("RGB")
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
        raise InputError(path, f"cannot decode the image ({one_line(e)}); expected a readable jpg or png") from None


class ImageEncoder(_PatchEncoder):
    modality = "image"
    expected = "ViT-style image encoder (AutoModel + AutoImageProcessor)"

    def __init__(self, model_id, device, pooling, batch_size):
        from transformers import AutoImageProcessor, AutoModel

        self.processor = _load(AutoImageProcessor, model_id, "image processor",
                               "a hub id or a directory with preprocessor_config.json")
        model = _load(AutoModel, model_id, "image model", "a hub id or a directory saved with save_pretrained")
        super().__init__(model_id, model, device, pooling, batch_size)

    def units(self, frames: list[Path]) -> list[Path]:
        return list(frames)  # decoded only when their chunk runs

    def forward_units(self, frames: list[Path]):
        pixels = self.processor(images=[read_image(f) for f in frames], return_tensors="pt")["pixel_values"]
        return self._forward(pixel_values=pixels)


def read_audio(path: Path, sampling_rate: int) -> np.ndarray:
    """Mono float32 samples of ``path`` at ``sampling_rate`` (libsndfile decodes, soxr resamples)."""
    import soundfile as sf
    import soxr

    try:
        data, sr = sf.read(str(path), dtype="float32", always_2d=True)
    except (OSError, RuntimeError, ValueError, TypeError) as e:  # sf.LibsndfileError is a RuntimeError
        raise InputError(path, f"cannot decode the audio ({one_line(e)}); expected a readable wav, flac, mp3 or ogg") from None
    if len(data) == 0:
        raise InputError(path, "the audio has no samples, expected a non-empty clip")
    mono = data.mean(axis=1, dtype=np.float32) if data.shape[1] > 1 else data[:, 0]
    if sr != sampling_rate:
        mono = soxr.resample(mono, sr, sampling_rate, quality="HQ").astype(np.float32, copy=False)
    return np.ascontiguousarray(mono)


def audio_windows(samples: np.ndarray, window: int, stride: int) -> list[np.ndarray]:
    """Consecutive windows of ``window`` samples every ``stride``; a last window shorter than half a
    stride is dropped (mostly padding, it would dilute the average) unless it is the only one."""
    starts = list(range(0, max(len(samples), 1), stride))
    windows = [samples[s:s + window] for s in starts]
    if len(windows) > 1 and len(samples) - starts[-1] < stride // 2:
        windows.pop()
    return windows


class AudioEncoder(_PatchEncoder):
    modality = "audio"
    expected = "AST-style audio encoder (AutoModel + AutoFeatureExtractor with max_length frames)"

    def __init__(self, model_id, device, pooling, batch_size):
        from transformers import AutoFeatureExtractor, AutoModel

        self.extractor = _load(AutoFeatureExtractor, model_id, "feature extractor",
                               "a hub id or a directory with preprocessor_config.json")
        model = _load(AutoModel, model_id, "audio model", "a hub id or a directory saved with save_pretrained")
        frames = getattr(self.extractor, "max_length", None)
        self.sampling_rate = getattr(self.extractor, "sampling_rate", None)
        if not isinstance(frames, int) or not isinstance(self.sampling_rate, int):
            raise InputError(model_id, "the feature extractor has no integer max_length (frames) and sampling_rate; "
                                       f"expected an {self.expected}")
        super().__init__(model_id, model, device, pooling, batch_size)
        # AST's filter bank: 25 ms frames every 10 ms. A window of max_length frames spans
        # (max_length - 1) hops plus one frame (10.24 s for max_length 1024); windows follow each
        # other every max_length hops, so no frame is seen twice.
        hop, frame = self.sampling_rate // 100, self.sampling_rate * 25 // 1000
        self.window, self.stride = (frames - 1) * hop + frame, frames * hop
        self.info.update(sampling_rate=self.sampling_rate, max_length_frames=frames, window_samples=self.window,
                         stride_samples=self.stride)

    def units(self, path: Path) -> list[np.ndarray]:
        return audio_windows(read_audio(path, self.sampling_rate), self.window, self.stride)

    def forward_units(self, windows: list[np.ndarray]):
        inputs = self.extractor(windows, sampling_rate=self.sampling_rate, return_tensors="pt")
        return self._forward(input_values=inputs["input_values"])


def load_encoder(modality: str, model_id: str, device: str, pooling: str, batch_size: int,
                 max_length: int | None = None) -> Encoder:
    path = Path(model_id)
    # A hub id is "name" or "org/name"; anything else that does not exist is a mistyped local path,
    # better said so than sent to the hub.
    if not path.exists() and (path.is_absolute() or model_id.startswith(".") or model_id.count("/") > 1):
        raise InputError(model_id, "no such model directory; expected a directory saved with save_pretrained "
                                   "or a hub id (org/name)")
    _quiet_transformers()
    if modality == "text":
        return TextEncoder(model_id, device, pooling, batch_size, max_length)
    if max_length is not None:
        raise InputError("--max-length", f"applies to text models only, not to --modality {modality}")
    if modality == "image":
        return ImageEncoder(model_id, device, pooling, batch_size)
    if modality == "audio":
        return AudioEncoder(model_id, device, pooling, batch_size)
    raise InputError("--modality", f"{modality!r} has no pretrained encoder, expected text, image or audio")
