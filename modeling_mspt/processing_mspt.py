"""MSPTProcessor: a BERT tokenizer and the vision tower's image processor (CLIP, DINOv2, ViT) behind one call, for both
MSPT tasks.

- Relation extraction: entity markers `<s> … </s>` around the head and `<o> … </o>` around the tail, from word spans
  `[start, end)` (reference notes §2.1). Unlike the reference, a closing marker is emitted at the end of the sentence too (D23).
  The markers are the only special tokens in the input: a literal `<s>`, `[SEP]`, … in the user's words is
  neutralised (`escape_special_tokens`) and tokenised as ordinary text.
- NER: word-level tags are aligned to the first sub-token of each word; other sub-tokens and special tokens get -100;
  `word_start_mask` marks the first sub-tokens (the CRF runs over them).
- A missing or unreadable image (`None`, an absent, empty, truncated or non-image file) becomes zero pixels with
  `image_mask = 0`, with one warning per file. Images are decoded by `load_image`: never more than
  `DECODE_MAX_PIXELS` (or `PIL.Image.MAX_IMAGE_PIXELS` when lower) are held, a larger JPEG is decoded at reduced
  scale (a 14000 x 14000 photo too), another format over PIL's limit is refused.
"""

import hashlib
import io
import math
import os
import re
from typing import NamedTuple

import torch
from PIL import Image, ImageOps, JpegImagePlugin
from transformers import (
    AutoConfig,
    AutoImageProcessor,
    AutoTokenizer,
    BatchFeature,
    BertTokenizer,
    BitImageProcessorPil,
    CLIPImageProcessorPil,
    ProcessorMixin,
)
from transformers.image_utils import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from transformers.utils import logging

logger = logging.get_logger(__name__)

RE_MARKERS = ("<s>", "</s>", "<o>", "</o>")
DECODE_MAX_PIXELS = 4096 * 4096  # larger images are decoded at reduced scale (the towers see a few hundred pixels)
_ESCAPE = "\u200b"  # zero-width space: splits a literal special token; BERT's normaliser then drops it


class DecodedImage(NamedTuple):
    """What `load_image` made of an image: `image` (RGB, at most the decode budget; `None` when absent or
    unreadable), `size` (width, height as the file declares it, when known) and `problem` (why `image` is `None`)."""

    image: "Image.Image | None"
    size: tuple[int, int] | None
    problem: str | None


def load_image(image, max_pixels: int = DECODE_MAX_PIXELS) -> DecodedImage:
    """Decode an image without ever raising on a bad file.

    `image`: a PIL image, a file path, raw bytes, or a `datasets` image dict (`{"bytes": ..., "path": ...}`, as rows
    read with `datasets.Image(decode=False)` hold them); `None` is no image. The budget is `max_pixels`, or
    `PIL.Image.MAX_IMAGE_PIXELS` when that is lower: a larger JPEG is decoded at reduced scale (`Image.draft`, 1/2 to
    1/8, even past PIL's own limit), a larger image of another format is decoded in full only within PIL's limit and
    then downscaled, and refused beyond it. EXIF orientation is applied, as `datasets.Image` does.
    Returns a `DecodedImage`; its `problem` says what was wrong (absent, empty, unreadable, too large).
    """
    if image is None:
        return DecodedImage(None, None, None)
    if isinstance(image, Image.Image):
        try:
            return DecodedImage(image.convert("RGB"), image.size, None)
        except Exception as err:  # a lazily opened file can still turn out truncated here
            return DecodedImage(None, image.size, f"unreadable ({type(err).__name__}: {err})")
    if isinstance(image, dict):
        data, path = image.get("bytes"), image.get("path")
    elif isinstance(image, (bytes, bytearray)):
        data, path = bytes(image), None
    elif isinstance(image, (str, os.PathLike)):
        data, path = None, os.fspath(image)
    else:
        raise TypeError(f"an image must be a PIL image, a file path, bytes, a {{'bytes', 'path'}} dict or None, "
                        f"got {type(image).__name__}")  # fmt: skip
    if data is None:
        if not path or not os.path.isfile(path):
            return DecodedImage(None, None, "file not found")
        if os.path.getsize(path) == 0:
            return DecodedImage(None, None, "empty file")
        source = path
    elif not data:
        return DecodedImage(None, None, "empty image bytes")
    else:
        source = io.BytesIO(data)
    try:
        return _decode(source, max_pixels)
    except Image.DecompressionBombError as err:
        return DecodedImage(None, None, f"too large to decode ({err} Raise PIL.Image.MAX_IMAGE_PIXELS to read it; "
                                        "only JPEG can be decoded at reduced scale)")  # fmt: skip
    except Exception as err:  # a decoder fed hostile bytes can raise almost anything
        return DecodedImage(None, None, f"unreadable ({type(err).__name__}: {err})")


def _decode(source, max_pixels: int) -> DecodedImage:
    limit = Image.MAX_IMAGE_PIXELS
    budget = min(max_pixels, limit) if limit else max_pixels
    try:
        opened = Image.open(source)
    except Image.DecompressionBombError:  # PIL refuses the declared size; a JPEG can still be decoded reduced
        if not _is_jpeg(source):
            raise
        opened = JpegImagePlugin.JpegImageFile(source)
    with opened:
        size = opened.size
        if size[0] * size[1] > budget:
            scale = math.sqrt(size[0] * size[1] / budget)  # ask for half the side: draft rounds its scale down
            opened.draft("RGB", (max(1, int(size[0] / (2 * scale))), max(1, int(size[1] / (2 * scale)))))
            if limit and opened.width * opened.height > limit:
                raise Image.DecompressionBombError(
                    f"{size[0]} x {size[1]} pixels is over PIL.Image.MAX_IMAGE_PIXELS={limit} and this "
                    f"{opened.format} cannot be decoded at reduced scale."
                )
        opened.load()
        image = ImageOps.exif_transpose(opened).convert("RGB")
    if image.width * image.height > budget:
        scale = math.sqrt(image.width * image.height / budget)
        image.thumbnail((max(1, int(image.width / scale)), max(1, int(image.height / scale))))
    return DecodedImage(image, size, None)


def _is_jpeg(source) -> bool:
    if isinstance(source, io.BytesIO):
        source.seek(0)
        return source.getvalue()[:3] == b"\xff\xd8\xff"
    with open(source, "rb") as f:
        return f.read(3) == b"\xff\xd8\xff"


def image_reference(image) -> str:
    """How a warning names an image: its path, or its size and digest when it came as bytes."""
    if isinstance(image, dict) and image.get("path"):
        return str(image["path"])
    if isinstance(image, (str, os.PathLike)):
        return os.fspath(image)
    data = image.get("bytes") if isinstance(image, dict) else image
    if isinstance(data, (bytes, bytearray)):
        return f"<{len(data)} bytes, sha256 {hashlib.sha256(data).hexdigest()[:12]}>"
    return f"<{type(image).__name__}>"


class MSPTProcessor(ProcessorMixin):
    r"""
    Args:
        image_processor: the vision tower's image processor (CLIP, DINOv2, ViT; its crop size is the whole-image size
            and its mean/std the tower's normalisation).
        tokenizer: a BERT tokenizer; the four RE entity markers are added to it as special tokens if missing, so
            `len(tokenizer)` is the vocabulary size the model needs.
        max_length (`int`, defaults to 80): truncation length in sub-tokens (= `MSPTConfig.max_text_length`).
        num_aux_images (`int`, defaults to 0) / aux_image_size (`int`, defaults to 128): object crops per example.
    """

    def __init__(self, image_processor=None, tokenizer=None, max_length=80, num_aux_images=0, aux_image_size=128,
                 **kwargs):  # fmt: skip
        self.max_length = max_length
        self.num_aux_images = num_aux_images
        self.aux_image_size = aux_image_size
        super().__init__(image_processor, tokenizer, **kwargs)
        missing = [m for m in RE_MARKERS if m not in self.tokenizer.get_vocab()]
        if missing:
            self.tokenizer.add_special_tokens({"additional_special_tokens": missing})

    @classmethod
    def from_text_vision_pretrained(cls, text_model_name_or_path, vision_model_name_or_path, **kwargs):
        """Tokenizer from the text checkpoint, image processor from the vision checkpoint (the tower's own resizing
        and normalisation). A local DINOv2 folder without `preprocessor_config.json` (a bare `save_pretrained` of the
        tower) gets the DINOv2 family's processor (`dinov2_image_processor`), with a warning; a local CLIP or ViT folder
        without one raises, since their normalisation differs between checkpoints."""
        tokenizer = AutoTokenizer.from_pretrained(text_model_name_or_path)
        vision = vision_model_name_or_path
        if os.path.isdir(vision) and not os.path.isfile(os.path.join(vision, "preprocessor_config.json")):
            config = AutoConfig.from_pretrained(vision)
            if config.model_type != "dinov2":
                raise ValueError(
                    f"The vision checkpoint {str(vision)!r} ({config.model_type}) has no preprocessor_config.json, so "
                    "its image size and normalisation are unknown (they differ between checkpoints of this family). "
                    "Save the image processor the tower was trained with next to it "
                    "(`image_processor.save_pretrained(folder)`)."
                )
            image_processor = dinov2_image_processor(config.image_size, config.patch_size)
            logger.warning(
                f"The DINOv2 checkpoint {str(vision)!r} has no preprocessor_config.json: using DINOv2's own "
                f"preprocessing (ImageNet mean/std, resize to {image_processor.size['shortest_edge']} px, centre crop "
                f"{image_processor.crop_size['height']} px); save an image processor there to choose another."
            )
        else:
            image_processor = AutoImageProcessor.from_pretrained(vision)
        return cls(image_processor=image_processor, tokenizer=tokenizer, **kwargs)

    @classmethod
    def from_word_vocabulary(cls, words, image_size=32, **kwargs):
        """A processor for a small model trained from scratch: one WordPiece entry per (lower-cased) word, plus the
        BERT special tokens, and a CLIP image processor at `image_size` pixels."""
        vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
        vocab += sorted({w.lower() for w in words} - set(vocab))
        tokenizer = BertTokenizer(vocab={w: i for i, w in enumerate(vocab)})
        crop = {"height": image_size, "width": image_size}
        image_processor = CLIPImageProcessorPil(size={"shortest_edge": image_size}, crop_size=crop)
        return cls(image_processor=image_processor, tokenizer=tokenizer, **kwargs)

    @property
    def image_size(self) -> int:
        """Side of the whole image in pixels: the image processor's centre crop (CLIP, DINOv2) or its fixed size (ViT).
        The model's `vision_config.image_size` must equal it (`build_model` passes it to
        `from_text_vision_pretrained`)."""
        ip = self.image_processor
        size = ip.crop_size if getattr(ip, "do_center_crop", False) and getattr(ip, "crop_size", None) else ip.size
        return size.get("height") or size["shortest_edge"]

    def marker_ids(self):
        return self.tokenizer.convert_tokens_to_ids(list(RE_MARKERS))

    def escape_special_tokens(self, words: list[list[str]]) -> list[list[str]]:
        """The words with every literal special token (`<s>`, `</o>`, `[SEP]`, …) broken by a zero-width space, so the
        tokenizer reads it as text: only the markers `__call__` inserts from the spans become marker tokens. Words
        without one are returned unchanged (the same list when the batch has none)."""
        pattern = "|".join(re.escape(t) for t in sorted(self.tokenizer.all_special_tokens, key=len, reverse=True))
        if not pattern or not re.search(pattern, "\n".join(w for sentence in words for w in sentence)):
            return words

        def escape(word):
            while re.search(pattern, word):  # until no special token is left, even one formed across an escape
                word = re.sub(pattern, lambda m: m[0][0] + _ESCAPE + m[0][1:], word)
            return word

        return [[escape(w) for w in sentence] for sentence in words]

    def __call__(
        self,
        words: list[list[str]],
        images: list | None = None,
        head_spans: list[tuple[int, int]] | None = None,
        tail_spans: list[tuple[int, int]] | None = None,
        word_labels: list[list[int]] | None = None,
        labels: list[int] | None = None,
        aux_images: list[list] | None = None,
        padding: bool | str = True,
        return_tensors: str = "pt",
    ) -> BatchFeature:
        r"""
        words: one list of words per example (pre-tokenised, as in the benchmarks).
        images: one PIL image, file path, image bytes / `datasets` image dict or `None` (missing) per example; `None`
            for the whole batch = no images. An unreadable file is a zero image (`image_mask=0`), warned once per file.
        head_spans / tail_spans: word spans `[start, end)` of the head and tail entity (relation extraction).
        word_labels: one tag id per word (NER); aligned to first sub-tokens, -100 elsewhere.
        labels: one relation id per example (relation extraction).
        aux_images: up to `num_aux_images` object crops (PIL or path) per example.
        Returns `input_ids`, `attention_mask`, `token_type_ids`, `pixel_values`, `image_mask`; with spans (relation
        extraction) `entity_positions` and `labels`; without (NER) `word_start_mask` and `labels` from `word_labels`;
        `aux_pixel_values` / `aux_mask` when the processor has object crops. The result goes straight into the model.
        """
        if not words or isinstance(words[0], str):
            raise ValueError("`words` must be a non-empty list of word lists, one per example.")
        batch = len(words)
        for name, value in (("images", images), ("head_spans", head_spans), ("tail_spans", tail_spans),
                            ("word_labels", word_labels), ("labels", labels), ("aux_images", aux_images)):  # fmt: skip
            if value is not None and len(value) != batch:
                raise ValueError(f"`{name}` has {len(value)} entries but `words` has {batch} examples.")
        if (head_spans is None) != (tail_spans is None):
            raise ValueError("Give both `head_spans` and `tail_spans` (relation extraction) or neither.")

        escaped = self.escape_special_tokens(words)
        sequences = escaped if head_spans is None else [self._mark(i, w, head_spans[i], tail_spans[i])
                                                        for i, w in enumerate(escaped)]  # fmt: skip
        encoding = self.tokenizer(
            sequences, is_split_into_words=True, truncation=True, max_length=self.max_length, padding=padding,
            return_tensors=return_tensors,
        )  # fmt: skip
        data = dict(encoding)
        if head_spans is not None:  # relation extraction
            if word_labels is not None:
                raise ValueError("`word_labels` (NER) and `head_spans` (relation extraction) exclude each other.")
            data["entity_positions"] = self._entity_positions(encoding["input_ids"])
            if labels is not None:
                data["labels"] = torch.tensor(labels, dtype=torch.long)
        else:  # NER
            word_ids = [encoding.word_ids(i) for i in range(batch)]
            data["word_start_mask"] = torch.tensor(
                [[int(w is not None and (j == 0 or ids[j - 1] != w)) for j, w in enumerate(ids)] for ids in word_ids]
            )
            if word_labels is not None:
                data["labels"] = self._align_labels(words, word_labels, word_ids, data["word_start_mask"])
        data.update(self._images(images, batch))
        if self.num_aux_images:
            data.update(self._aux_images(aux_images, batch))
        return BatchFeature(data=data, tensor_type=return_tensors)

    def _mark(self, index, words, head, tail):
        for name, (start, end) in (("head_spans", head), ("tail_spans", tail)):
            if not 0 <= start < end <= len(words):
                raise ValueError(
                    f"`{name}[{index}]` = ({start}, {end}) is outside the sentence of {len(words)} words "
                    "(spans are [start, end) word indices)."
                )
        # Closing markers sort before opening ones at the same position ("… </s> <o> …").
        inserts = sorted([(head[0], 1, "<s>"), (head[1], 0, "</s>"), (tail[0], 1, "<o>"), (tail[1], 0, "</o>")])
        out, previous = [], 0
        for position, _, marker in inserts:
            out += list(words[previous:position]) + [marker]
            previous = position
        return out + list(words[previous:])

    def _entity_positions(self, input_ids):
        start_s, _, start_o, _ = self.marker_ids()
        positions = torch.stack([(input_ids == start_s).int().argmax(1), (input_ids == start_o).int().argmax(1)], 1)
        found = torch.stack([(input_ids == start_s).any(1), (input_ids == start_o).any(1)], 1)
        if not found.all():
            logger.warning_once(
                f"{int((~found).any(1).sum())} example(s) lost an entity marker to truncation at max_length="
                f"{self.max_length}; their entity features read the [CLS] state."
            )
        return positions * found

    def _align_labels(self, words, word_labels, word_ids, word_start_mask):
        aligned = torch.full(word_start_mask.shape, -100, dtype=torch.long)
        dropped = 0
        for i, (tags, ids) in enumerate(zip(word_labels, word_ids)):
            if len(tags) != len(words[i]):
                raise ValueError(f"`word_labels[{i}]` has {len(tags)} tags but `words[{i}]` has {len(words[i])} words.")
            for j, w in enumerate(ids):
                if word_start_mask[i, j]:
                    aligned[i, j] = tags[w]
            dropped += len(tags) - int(word_start_mask[i].sum())
        if dropped:
            logger.warning_once(
                f"{dropped} word(s) got no sub-token (truncated at max_length={self.max_length} or empty) and "
                "carry no label in this batch."
            )
        return aligned

    def _pixels(self, images, size=None):
        kwargs = {} if size is None else {"size": {"height": size, "width": size},
                                          "crop_size": {"height": size, "width": size}, "do_center_crop": False}
        return self.image_processor(images, return_tensors="pt", **kwargs)["pixel_values"]  # fmt: skip

    def _images(self, images, batch):
        size = self.image_size
        pixel_values = torch.zeros(batch, 3, size, size)
        image_mask = torch.zeros(batch, dtype=torch.long)
        loaded = [_load(img) for img in images or [None] * batch]
        present = [i for i, img in enumerate(loaded) if img is not None]
        if present:
            pixel_values[present] = self._pixels([loaded[i] for i in present])
            image_mask[present] = 1
        return {"pixel_values": pixel_values, "image_mask": image_mask}

    def _aux_images(self, aux_images, batch):
        n, size = self.num_aux_images, self.aux_image_size
        aux_pixel_values = torch.zeros(batch, n, 3, size, size)
        aux_mask = torch.zeros(batch, n, dtype=torch.long)
        for i, crops in enumerate(aux_images or [[]] * batch):
            loaded = [c for c in (_load(c) for c in list(crops)[:n]) if c is not None]
            if loaded:
                aux_pixel_values[i, : len(loaded)] = self._pixels(loaded, size)
                aux_mask[i, : len(loaded)] = 1
        return {"aux_pixel_values": aux_pixel_values, "aux_mask": aux_mask}


def dinov2_image_processor(image_size: int, patch_size: int) -> BitImageProcessorPil:
    """The preprocessing the facebook/dinov2-* checkpoints ship: ImageNet mean/std, shortest edge resized to 256/224
    of the crop, a centre crop of 224 px (16 x 16 patches of 14 px; the position table, trained at 518 px, is resampled
    to that grid at load time) or of the tower's own image size when that is smaller (tiny test towers)."""
    crop = min(224 // patch_size, image_size // patch_size) * patch_size
    return BitImageProcessorPil(size={"shortest_edge": round(crop * 256 / 224)},
                                crop_size={"height": crop, "width": crop},
                                image_mean=IMAGENET_DEFAULT_MEAN, image_std=IMAGENET_DEFAULT_STD)  # fmt: skip


def _load(image):
    """`load_image` for a processor call: the RGB image, or `None` with one warning per file and problem."""
    decoded = load_image(image)
    if decoded.problem:
        logger.warning_once(f"image {image_reference(image)}: {decoded.problem}; using a zero image (image_mask=0).")
    return decoded.image


MSPTProcessor.register_for_auto_class()

__all__ = ["DECODE_MAX_PIXELS", "DecodedImage", "MSPTProcessor", "RE_MARKERS", "dinov2_image_processor", "load_image"]
