"""MSPTProcessor: a BERT tokenizer and a CLIP image processor behind one call, for both MSPT tasks.

- Relation extraction: entity markers `<s> … </s>` around the head and `<o> … </o>` around the tail, from word spans
  `[start, end)` (reference notes §2.1). Unlike the reference, a closing marker is emitted at the end of the sentence too (D23).
- NER: word-level tags are aligned to the first sub-token of each word; other sub-tokens and special tokens get -100;
  `word_start_mask` marks the first sub-tokens (the CRF runs over them).
- A missing image (`None`) becomes zero pixels with `image_mask = 0`.
"""

import os

import torch
from PIL import Image
from transformers import (
    AutoImageProcessor,
    AutoTokenizer,
    BatchFeature,
    BertTokenizer,
    CLIPImageProcessorPil,
    ProcessorMixin,
)
from transformers.utils import logging

logger = logging.get_logger(__name__)

RE_MARKERS = ("<s>", "</s>", "<o>", "</o>")


def _load_image(image, where):
    if image is None or isinstance(image, Image.Image):
        return image
    if isinstance(image, (str, os.PathLike)):
        if not os.path.exists(image):
            logger.warning_once(f"{where}: image file {str(image)!r} not found; using a zero image (image_mask=0).")
            return None
        return Image.open(image).convert("RGB")
    raise TypeError(f"{where} must be a PIL image, a file path or None, got {type(image).__name__}.")


class MSPTProcessor(ProcessorMixin):
    r"""
    Args:
        image_processor: a CLIP image processor (sets the whole-image size).
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
        """Tokenizer from the text checkpoint, image processor from the vision checkpoint."""
        tokenizer = AutoTokenizer.from_pretrained(text_model_name_or_path)
        image_processor = AutoImageProcessor.from_pretrained(vision_model_name_or_path)
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

    def marker_ids(self):
        return self.tokenizer.convert_tokens_to_ids(list(RE_MARKERS))

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
        images: one PIL image, file path or `None` (missing) per example; `None` for the whole batch = no images.
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

        sequences = words if head_spans is None else [self._mark(i, w, head_spans[i], tail_spans[i])
                                                      for i, w in enumerate(words)]  # fmt: skip
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
        size = self.image_processor.crop_size["height"]
        pixel_values = torch.zeros(batch, 3, size, size)
        image_mask = torch.zeros(batch, dtype=torch.long)
        loaded = [_load_image(img, f"`images[{i}]`") for i, img in enumerate(images or [None] * batch)]
        present = [i for i, img in enumerate(loaded) if img is not None]
        if present:
            pixel_values[present] = self._pixels([loaded[i].convert("RGB") for i in present])
            image_mask[present] = 1
        return {"pixel_values": pixel_values, "image_mask": image_mask}

    def _aux_images(self, aux_images, batch):
        n, size = self.num_aux_images, self.aux_image_size
        aux_pixel_values = torch.zeros(batch, n, 3, size, size)
        aux_mask = torch.zeros(batch, n, dtype=torch.long)
        for i, crops in enumerate(aux_images or [[]] * batch):
            loaded = [c for c in (_load_image(c, f"`aux_images[{i}]`") for c in list(crops)[:n]) if c is not None]
            if loaded:
                aux_pixel_values[i, : len(loaded)] = self._pixels([c.convert("RGB") for c in loaded], size)
                aux_mask[i, : len(loaded)] = 1
        return {"aux_pixel_values": aux_pixel_values, "aux_mask": aux_mask}


MSPTProcessor.register_for_auto_class()

__all__ = ["MSPTProcessor", "RE_MARKERS"]
