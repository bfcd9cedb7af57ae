"""MSPTProcessor: RE entity markers from word spans, NER first-sub-token alignment, missing images, bad input."""

import pytest
import torch
from PIL import Image


def tokens(processor, ids):
    return [t for t in processor.tokenizer.convert_ids_to_tokens(ids.tolist()) if t != "[PAD]"]


def test_entity_markers_wrap_head_and_tail(tiny_processor):
    batch = tiny_processor(
        [["john", "smith", "visited", "paris"], ["paris", "visited", "john"], ["john", "paris"]],
        head_spans=[(0, 2), (2, 3), (0, 1)],
        tail_spans=[(3, 4), (0, 1), (1, 2)],
        labels=[2, 1, 0],
    )
    assert tokens(tiny_processor, batch["input_ids"][0]) == [
        "[CLS]", "<s>", "john", "smith", "</s>", "visited", "<o>", "paris", "</o>", "[SEP]"]  # fmt: skip
    # Tail before head, and the head ends at the last word: its closing marker is still there (D23 fixed).
    assert tokens(tiny_processor, batch["input_ids"][1]) == [
        "[CLS]", "<o>", "paris", "</o>", "visited", "<s>", "john", "</s>", "[SEP]"]  # fmt: skip
    assert tokens(tiny_processor, batch["input_ids"][2]) == [
        "[CLS]", "<s>", "john", "</s>", "<o>", "paris", "</o>", "[SEP]"]  # fmt: skip
    assert batch["entity_positions"].tolist() == [[1, 6], [5, 1], [1, 4]]
    assert batch["labels"].tolist() == [2, 1, 0]
    assert batch["input_ids"].shape == batch["attention_mask"].shape


def test_ner_labels_go_to_the_first_sub_token(tiny_processor):
    batch = tiny_processor([["john", "cats", "paris"], ["dogs"]], word_labels=[[1, 0, 3], [0]])
    assert tokens(tiny_processor, batch["input_ids"][0]) == ["[CLS]", "john", "cat", "##s", "paris", "[SEP]"]
    assert batch["labels"].tolist() == [[-100, 1, 0, -100, 3, -100], [-100, 0, -100, -100, -100, -100]]
    assert batch["word_start_mask"].tolist() == [[0, 1, 1, 0, 1, 0], [0, 1, 0, 0, 0, 0]]


def test_missing_images_become_zero_pixels_with_mask_zero(tiny_processor, tmp_path):
    red = Image.new("RGB", (50, 40), (255, 0, 0))
    red.save(tmp_path / "red.png")
    batch = tiny_processor(
        [["a", "cat"]] * 4, images=[red, None, str(tmp_path / "red.png"), str(tmp_path / "absent.png")]
    )
    assert batch["pixel_values"].shape == (4, 3, 32, 32)
    assert batch["image_mask"].tolist() == [1, 0, 1, 0]
    assert (batch["pixel_values"][[1, 3]] == 0).all()
    torch.testing.assert_close(batch["pixel_values"][0], batch["pixel_values"][2])
    assert batch["pixel_values"][0].abs().sum() > 0
    no_images = tiny_processor([["a", "cat"]])
    assert no_images["image_mask"].tolist() == [0]


def test_object_crops_are_resized_and_masked(tiny_tokenizer, tiny_image_processor):
    from modeling_mspt import MSPTProcessor

    processor = MSPTProcessor(tiny_image_processor, tiny_tokenizer, max_length=16, num_aux_images=2,
                              aux_image_size=16)  # fmt: skip
    crop = Image.new("RGB", (20, 30), (0, 255, 0))
    batch = processor([["a"], ["cat"]], aux_images=[[crop], []])
    assert batch["aux_pixel_values"].shape == (2, 2, 3, 16, 16)
    assert batch["aux_mask"].tolist() == [[1, 0], [0, 0]]


def test_truncation_respects_max_length(tiny_processor):
    words = ["the", "cat"] * 20
    batch = tiny_processor([words], word_labels=[[0] * 40], head_spans=None)
    assert batch["input_ids"].shape[1] == 16
    assert int(batch["word_start_mask"].sum()) == 14


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(head_spans=[(0, 3)], tail_spans=[(1, 2)]), r"`head_spans\[0\]` = \(0, 3\) is outside the sentence"),
        (dict(head_spans=[(0, 1)], tail_spans=[(2, 2)]), r"`tail_spans\[0\]`"),
        (dict(head_spans=[(0, 1)]), "both `head_spans` and `tail_spans`"),
        (dict(word_labels=[[0]]), r"`word_labels\[0\]` has 1 tags but `words\[0\]` has 2 words"),
        (dict(images=[None, None]), "`images` has 2 entries but `words` has 1"),
    ],
)
def test_bad_input_names_the_argument(tiny_processor, kwargs, message):
    with pytest.raises(ValueError, match=message):
        tiny_processor([["john", "paris"]], **kwargs)


def test_processor_output_goes_straight_into_both_heads(tiny_processor):
    from conftest import NER_LABELS, RE_LABELS, make_config
    from modeling_mspt import MSPTForRelationExtraction, MSPTForTokenClassification

    vocab = {"vocab_size": len(tiny_processor.tokenizer)}
    ner = MSPTForTokenClassification(make_config(NER_LABELS, text=vocab)).eval()
    batch = tiny_processor([["john", "cats", "paris"], ["dogs"]], word_labels=[[1, 0, 3], [0]])
    out = ner(**batch)
    assert ((out.tags == -100) == (batch["labels"] == -100)).all() and out.loss > 0
    re = MSPTForRelationExtraction(make_config(RE_LABELS, text=vocab, re_pooling="entity")).eval()
    batch = tiny_processor([["john", "paris"]], head_spans=[(0, 1)], tail_spans=[(1, 2)], labels=[3])
    assert re(**batch).logits.shape == (1, len(RE_LABELS))
