"""`MSPTKnowledgeGraphPipeline`: (text, image) posts in, entities and relation triples with provenance out.

Registered as the transformers task ``"multimodal-kg-construction"`` when the package is imported, and shipped with
every NER checkpoint (`MSPTForTokenClassification.save_pretrained` writes `custom_pipelines` into config.json and
copies this file with the modules it imports), so that a process without the package loads it from the checkpoint
(with the package imported, the loaded config drops that entry and the registered pipeline serves the task, without
`trust_remote_code`):

    pipe = transformers.pipeline("multimodal-kg-construction", model="outputs/imner", re_model="outputs/imre",
                                 trust_remote_code=True)  # `model`: the NER checkpoint; `re_model`: the RE one
    pipe = MSPTKnowledgeGraphPipeline(model="kg-dir")  # a directory holding ner/ and re/ (`save_pretrained`)
    # (transformers.pipeline loads one model directory: there, pass model="kg-dir/ner", re_model="kg-dir/re")
    pipe("coach Ada meets mayor Ben")  # one post, text only -> one result
    pipe([{"id": "1", "text": "coach Ada meets mayor Ben", "image": "1.jpg"}, "Ben visits Rome"], threshold=0.5)

Inputs: a post is a `str` (its text, no image) or a dict `{"text": ..., "image": path | PIL image | None, "id": ...,
"entity_spans": ...}`; pass one post (one result back) or a list / iterable of posts (a list of results, same order).

Per post: the text is split on whitespace into words; the NER model tags the words (batches of posts) and BIO spans
become entities; the RE model classifies every ordered pair of entities of the post (all pairs of all posts of a
chunk in batches, never one forward pass per pair); `None` and relations under `threshold` are dropped.

Confidences. Entity: the mean over the span's words of the CRF posterior marginal p(tag_i = viterbi_i | post)
(forward-backward, `MSPTCRF.marginals`), so it accounts for the transitions, unlike a softmax of the emissions.
Triple: the softmax probability of the predicted relation over the RE label space.

A post may bring its own entities as `entity_spans` (`[start, end]` or `[start, end, type]` word spans): NER is
skipped for it (confidence 1) and only the RE stage runs, e.g. to use another entity recogniser or gold entities.

Bad input never stops the other posts. A post without text, with a `text` that is not a string, with bad
`entity_spans`, or that is neither a string nor a mapping gets `error` (the reason) and no entities or triples. A
missing or unreadable image file (empty, not an image, truncated, or over PIL's size limit in a format that cannot be
decoded at reduced scale) is not an error: the text still carries the post, so the image is replaced by a zero image
(`image_mask=0`, as in training) and the post gets `image_missing=True` and a warning. Every result has the same
keys, `error` is `None` for a post that was processed. A huge JPEG (a 14000 x 14000 photo) is decoded at reduced
scale (`processing_mspt.load_image`). Literal marker strings in the text (`<s>`, `</o>`, ...) are read as text.
Object crops (`aux_images`) are not used; text beyond a processor's `max_length` is not tagged (warned per post).
"""

import itertools
import os
import re
from collections.abc import Iterable
from dataclasses import dataclass, field

import torch
from PIL import Image
from transformers import Pipeline
from transformers.pipelines import PIPELINE_REGISTRY
from transformers.utils import logging
from transformers.utils.logging import tqdm

from .configuration_mspt import MSPTConfig
from .modeling_mspt import MSPTForRelationExtraction, MSPTForTokenClassification
from .processing_mspt import MSPTProcessor, load_image

logger = logging.get_logger(__name__)

KG_TASK = "multimodal-kg-construction"
PROGRESS_BAR_MIN_POSTS = 256  # progress_bar=None shows a bar from this many posts on


@dataclass
class _Post:
    """One post on its way through the two stages."""

    index: int
    id: str
    words: list[str] = field(default_factory=list)
    char_spans: list[tuple[int, int]] = field(default_factory=list)
    image: Image.Image | None = None
    image_ref: str | None = None  # the path given, or a PIL image's filename
    image_missing: bool = False
    entities_given: bool = False
    warnings: list[str] = field(default_factory=list)
    error: str | None = None
    entities: list[tuple[int, int, str, float]] = field(default_factory=list)  # (start, end, type, score)
    pairs: list[tuple[int, int, int, float]] = field(default_factory=list)  # (head, tail, relation id, probability)


class MSPTKnowledgeGraphPipeline(Pipeline):
    r"""
    Args:
        model: the NER model (`MSPTForTokenClassification`), its directory, or a directory holding `ner/` and `re/`.
            `transformers.pipeline(KG_TASK, model=...)` takes the NER checkpoint (a directory or a Hub id) here.
        processor: the NER model's `MSPTProcessor` (loaded from the directory when `model` is one).
        re_model: the RE model (`MSPTForRelationExtraction`), its directory or its Hub id (loaded with this
            module's classes, so with the NER checkpoint's code when the pipeline came from it).
        re_processor: the RE model's `MSPTProcessor` (loaded from `re_model`'s directory when it is one).
        batch_size (`int`, defaults to 16): posts per NER forward pass; `re_batch_size` (defaults to 64): entity
            pairs per RE forward pass. `threshold` (defaults to 0.5): lowest triple confidence kept;
            `entity_threshold` (defaults to 0.0): lowest entity confidence kept (before pairing);
            `progress_bar` (`bool`, defaults to `None` = from 256 posts on); `chunk_size` (defaults to 512): posts
            whose images are held in memory at once. All may be given here or per call.

    Call with one post (a `str` or a dict) or a list / iterable of posts (see the module docstring).
    Returns one dict per post: `id`, `entities` (`text`, `type`, `score`, `provenance` = `post_id`, word `span`
    `[start, end)`, `char_span`, `image`), `triples` (`head`, `head_type`, `relation`, `tail`, `tail_type`, `score`,
    `provenance` = `post_id`, `head_span`, `tail_span`, `image`), `image`, `image_missing`, `warnings`, `error`.
    """

    _load_processor = True
    _load_tokenizer = False
    _load_image_processor = False
    _load_feature_extractor = False
    _load_video_processor = False

    def __init__(self, model, processor=None, re_model=None, re_processor=None, **kwargs):
        if isinstance(model, (str, os.PathLike)):
            folder = os.fspath(model)
            ner_dir, re_dir = os.path.join(folder, "ner"), os.path.join(folder, "re")
            if re_model is None and os.path.isdir(ner_dir) and os.path.isdir(re_dir):
                folder, re_model = ner_dir, re_dir
            model = _NERCheckpoint.from_pretrained(folder)
            # `config=`: the tokenizer is then found without AutoConfig, which (where the package is not installed)
            # would stop to ask whether to trust the checkpoint's configuration code
            processor = processor or MSPTProcessor.from_pretrained(folder, config=model.config)
        if isinstance(re_model, (str, os.PathLike)):
            _check_checkpoint(re_model, "MSPTForRelationExtraction", "re_model")
            path, re_model = re_model, MSPTForRelationExtraction.from_pretrained(re_model)
            re_processor = re_processor or MSPTProcessor.from_pretrained(path, config=re_model.config)
        if re_model is None or processor is None or re_processor is None:
            raise ValueError(
                "MSPTKnowledgeGraphPipeline needs an NER model and an RE model with their processors: pass "
                "`model=<ner dir>, re_model=<re dir>` (also to `transformers.pipeline(\"multimodal-kg-construction\", "
                "model=<ner dir or Hub id>, re_model=<re dir or Hub id>, trust_remote_code=True)`), "
                "`model=<dir with ner/ and re/>`, or the four objects."
            )
        for name, loaded, expected in (("model", model, "MSPTForTokenClassification"),
                                       ("re_model", re_model, "MSPTForRelationExtraction")):  # fmt: skip
            # the class of the model object, or the one its checkpoint was saved from (swapped ner/re directories)
            saved = getattr(loaded.config, "architectures", None) or [type(loaded).__name__]
            if type(loaded).__name__ != expected or expected not in saved:
                raise _swapped(name, expected, f"{type(loaded).__name__} from a checkpoint of {saved[0]}")
        super().__init__(model=model, processor=processor, **kwargs)
        self.model.eval()
        self.re_model = re_model.to(self.device).eval()
        self.re_processor = re_processor
        self.ner_labels = [model.config.id2label[i] for i in range(model.config.num_labels)]
        self.relations = [re_model.config.id2label[i] for i in range(re_model.config.num_labels)]
        if "None" not in self.relations:
            logger.warning_once("The RE label space has no 'None' label: every entity pair gets a relation.")

    def save_pretrained(self, save_directory, **kwargs):
        """`ner/` and `re/` (model + processor each) under `save_directory`; `MSPTKnowledgeGraphPipeline(model=dir)`
        loads them back."""
        for name, model, processor in (("ner", self.model, self.processor), ("re", self.re_model, self.re_processor)):
            model.save_pretrained(os.path.join(save_directory, name), **kwargs)
            processor.save_pretrained(os.path.join(save_directory, name))

    def get_inference_context(self):
        return torch.inference_mode

    def _sanitize_parameters(self, threshold=None, entity_threshold=None, re_batch_size=None, progress_bar=None,
                             chunk_size=None):  # fmt: skip
        forward, post = {}, {}
        for name, value in (("threshold", threshold), ("entity_threshold", entity_threshold)):
            if value is not None and not 0.0 <= value <= 1.0:
                raise ValueError(f"`{name}`={value}: a confidence threshold must lie in [0, 1].")
        for name, value in (("re_batch_size", re_batch_size), ("chunk_size", chunk_size)):
            if value is not None and value < 1:
                raise ValueError(f"`{name}`={value}: must be at least 1.")
        for name, value in (("entity_threshold", entity_threshold), ("re_batch_size", re_batch_size),
                            ("progress_bar", progress_bar), ("chunk_size", chunk_size)):  # fmt: skip
            if value is not None:
                forward[name] = value
        if threshold is not None:
            post["threshold"] = threshold
        return {}, forward, post

    def __call__(self, posts, batch_size: int | None = None, num_workers: int | None = None, **kwargs):
        """`posts`: one post (a `str`: its text; or a dict) -> one result dict; a list or other iterable of posts -> a
        list of results (same order). `num_workers` is accepted for compatibility and ignored: posts are prepared in
        the calling process."""
        _, forward, post = self._sanitize_parameters(**kwargs)
        forward, post = {**self._forward_params, **forward}, {**self._postprocess_params, **post}
        batch_size = batch_size or self._batch_size or 16
        if batch_size < 1:
            raise ValueError(f"`batch_size`={batch_size}: must be at least 1.")
        single = isinstance(posts, (str, bytes, dict)) or not isinstance(posts, Iterable)  # pipe(42): one bad post
        items = iter([posts] if single else posts)
        total = len(posts) if hasattr(posts, "__len__") and not single else None
        show = forward.get("progress_bar")
        show = (total or 0) >= PROGRESS_BAR_MIN_POSTS if show is None else show
        chunk_size = forward.get("chunk_size", 512)
        results = []
        with tqdm(total=total, desc="posts", unit="post", disable=not show) as bar:
            for start in itertools.count(0, chunk_size):
                chunk = [self.preprocess(p, index=start + i) for i, p in enumerate(itertools.islice(items, chunk_size))]
                if not chunk:
                    break
                self._tag_entities(chunk, batch_size, forward.get("entity_threshold", 0.0))
                self._classify_pairs(chunk, forward.get("re_batch_size", 64))
                results += [self.postprocess(p, **post) for p in chunk]
                bar.update(len(chunk))
        return results[0] if single else results

    def preprocess(self, post, index: int = 0) -> _Post:
        """Check a post (a `str` is its text), split its text into words (with character spans), open its image."""
        if isinstance(post, str):
            post = {"text": post}
        if not isinstance(post, dict):
            state = _Post(index, f"#{index}",
                          error=f"a post must be a str or a dict with `text`, got {type(post).__name__}")  # fmt: skip
            return _report(state)
        state = _Post(index, str(post["id"]) if post.get("id") is not None else f"#{index}")
        text = post.get("text")
        if not isinstance(text, str) or not text.strip():
            state.error = "empty text" if text is None or isinstance(text, str) else f"`text` is {type(text).__name__}"
            return _report(state)
        matches = list(re.finditer(r"\S+", text))
        state.words, state.char_spans = [m.group() for m in matches], [m.span() for m in matches]
        if post.get("entity_spans") is not None:
            try:
                state.entities = [_given_entity(span, len(state.words)) for span in post["entity_spans"]]
            except (TypeError, ValueError) as err:
                state.error = f"bad `entity_spans`: {err}"
                return _report(state)
            state.entities_given = True
        state.image, state.image_ref, problem = _open_image(post.get("image"))
        if problem:
            state.image_missing = True
            state.warnings.append(problem)
        return _report(state)

    def _forward(self, model_inputs, stage: str):
        if stage == "re":
            probabilities = self.re_model(**model_inputs).logits.softmax(-1)
            score, relation = probabilities.max(-1)
            return {"relation": relation, "score": score}
        starts = model_inputs["word_start_mask"].bool()
        out = self.model(**model_inputs)
        # Word starts packed to the left in order, as the CRF saw them: step j is the j-th word with a sub-token.
        order = torch.argsort((~starts).to(torch.int8), dim=1, stable=True)
        mask = starts.gather(1, order)
        emissions = out.logits.gather(1, order.unsqueeze(-1).expand(-1, -1, out.logits.shape[-1]))
        tags = out.tags.gather(1, order).clamp(min=0)  # [B, T]
        scores = self.model.crf.marginals(emissions, mask).gather(2, tags.unsqueeze(-1)).squeeze(-1)
        return {"tags": tags, "scores": scores, "lengths": mask.sum(1)}

    def _tag_entities(self, chunk: list[_Post], batch_size: int, entity_threshold: float):
        todo = [p for p in chunk if p.error is None and not p.entities_given]
        for i in range(0, len(todo), batch_size):
            batch = todo[i : i + batch_size]
            inputs = self.processor([p.words for p in batch], images=[p.image for p in batch])
            out = self.forward(dict(inputs), stage="ner")
            for p, tags, scores, n in zip(batch, out["tags"].tolist(), out["scores"].tolist(), out["lengths"].tolist()):
                word_ids = self._word_ids(p, n)
                spans = _bio_spans([self.ner_labels[t] for t in tags[:n]], scores[:n])
                p.entities = [(word_ids[s], word_ids[e - 1] + 1, kind, score) for s, e, kind, score in spans
                              if score >= entity_threshold]  # fmt: skip

    def _word_ids(self, post: _Post, tagged: int) -> list[int]:
        """The word index of each tagged step: the identity unless words were truncated or had no sub-token."""
        if tagged == len(post.words):
            return list(range(tagged))
        words = self.processor.escape_special_tokens([post.words])[0]  # tokenised as the processor does
        ids = self.processor.tokenizer(words, is_split_into_words=True, truncation=True,
                                       max_length=self.processor.max_length).word_ids()  # fmt: skip
        starts = [w for j, w in enumerate(ids) if w is not None and (j == 0 or ids[j - 1] != w)]
        if starts and starts[-1] < len(post.words) - 1:
            post.warnings.append(f"words {starts[-1] + 1}.. lie beyond the NER max_length "
                                 f"({self.processor.max_length} sub-tokens) and were not tagged")  # fmt: skip
        return starts

    def _classify_pairs(self, chunk: list[_Post], re_batch_size: int):
        pairs = [(p, h, t) for p in chunk for h in range(len(p.entities)) for t in range(len(p.entities)) if h != t]
        if not pairs:
            return
        posts = list({id(p): p for p, _, _ in pairs}.values())
        row = {id(p): i for i, p in enumerate(posts)}
        pixel_values, image_mask = self._re_images(posts)
        start_s, _, start_o, _ = self.re_processor.marker_ids()
        for i in range(0, len(pairs), re_batch_size):
            batch = pairs[i : i + re_batch_size]
            inputs = dict(self.re_processor([p.words for p, _, _ in batch],
                                            head_spans=[p.entities[h][:2] for p, h, _ in batch],
                                            tail_spans=[p.entities[t][:2] for p, _, t in batch]))  # fmt: skip
            rows = torch.tensor([row[id(p)] for p, _, _ in batch])
            inputs["pixel_values"], inputs["image_mask"] = pixel_values[rows], image_mask[rows]
            ids = inputs["input_ids"]
            kept = ((ids == start_s).any(1) & (ids == start_o).any(1)).tolist()
            out = self.forward(inputs, stage="re")
            for (p, h, t), ok, relation, score in zip(batch, kept, out["relation"].tolist(), out["score"].tolist()):
                if ok:
                    p.pairs.append((h, t, relation, score))
                else:
                    p.warnings.append(f"pair {p.entities[h][:2]} -> {p.entities[t][:2]} lies beyond the RE max_length "
                                      f"({self.re_processor.max_length} sub-tokens); not classified")  # fmt: skip

    def _re_images(self, posts: list[_Post]) -> tuple[torch.Tensor, torch.Tensor]:
        """Pixels of each post's image for the RE model, computed once per post and shared by its pairs."""
        image_processor = self.re_processor.image_processor
        size = self.re_processor.image_size  # the crop (CLIP, DINOv2) or the fixed size (ViT)
        pixel_values = torch.zeros(len(posts), 3, size, size)
        image_mask = torch.zeros(len(posts), dtype=torch.long)
        present = [i for i, p in enumerate(posts) if p.image is not None]
        if present:
            images = [posts[i].image for i in present]
            pixel_values[present] = image_processor(images, return_tensors="pt")["pixel_values"]
            image_mask[present] = 1
        return pixel_values, image_mask

    def postprocess(self, post: _Post, threshold: float = 0.5) -> dict:
        """Records of one post: entities, triples over `threshold` (no `None`), provenance, warnings, error."""
        entities = [{"text": " ".join(post.words[s:e]), "type": kind, "score": round(score, 6),
                     "provenance": {"post_id": post.id, "span": [s, e],
                                    "char_span": [post.char_spans[s][0], post.char_spans[e - 1][1]],
                                    "image": post.image_ref}}
                    for s, e, kind, score in post.entities]  # fmt: skip
        triples = []
        for h, t, relation, score in post.pairs:
            name = self.relations[relation]
            if name == "None" or score < threshold:
                continue
            head, tail = entities[h], entities[t]
            provenance = {"post_id": post.id, "head_span": head["provenance"]["span"],
                          "tail_span": tail["provenance"]["span"], "image": post.image_ref}  # fmt: skip
            triples.append({"head": head["text"], "head_type": head["type"], "relation": name, "tail": tail["text"],
                            "tail_type": tail["type"], "score": round(score, 6), "provenance": provenance})  # fmt: skip
        post.image = None  # release the pixels of a finished chunk
        return {"id": post.id, "entities": entities, "triples": triples, "image": post.image_ref,
                "image_missing": post.image_missing, "warnings": post.warnings, "error": post.error}  # fmt: skip


def _swapped(name: str, expected: str, got: str) -> ValueError:
    return ValueError(f"`{name}` must be an {expected} (the {'NER' if name == 'model' else 'RE'} model), got {got}; "
                      "are the NER and RE models swapped?")  # fmt: skip


def _check_checkpoint(path, expected: str, name: str) -> None:
    """Refuse a checkpoint saved from another head before its weights are loaded (their shapes would not match)."""
    saved = MSPTConfig.from_pretrained(path).architectures or []
    if saved and expected not in saved:
        raise _swapped(name, expected, f"a checkpoint of {saved[0]} ({os.fspath(path)})")


class _NERCheckpoint:
    """How the NER model is loaded, also by `transformers.pipeline(KG_TASK, model=<dir>)` (the registered
    `pt_model`): the checkpoint's `architectures` is read first, so swapped NER/RE directories get a clear error."""

    @classmethod
    def from_pretrained(cls, path, *args, **kwargs):
        _check_checkpoint(path, "MSPTForTokenClassification", "model")
        return MSPTForTokenClassification.from_pretrained(path, *args, **kwargs)


def _report(post: _Post) -> _Post:
    for problem in ([post.error] if post.error else []) + post.warnings:
        logger.warning(f"post {post.id!r}: {problem}")
    return post


def _open_image(image) -> tuple[Image.Image | None, str | None, str | None]:
    """(RGB image or None, reference for provenance, problem or None). Never raises on a bad or huge file."""
    if image is None:
        return None, None, None
    if isinstance(image, Image.Image):
        reference = getattr(image, "filename", "") or None
    elif isinstance(image, (str, os.PathLike)):
        reference = os.fspath(image)
    else:
        return None, None, f"`image` must be a path, a PIL image or None, got {type(image).__name__}; used a zero image"
    decoded = load_image(image)
    if decoded.problem:
        what = f"image file {reference!r}" if isinstance(image, (str, os.PathLike)) else "the PIL image"
        return None, reference, f"{what}: {decoded.problem}; used a zero image"
    return decoded.image, reference, None


def _given_entity(span, num_words: int) -> tuple[int, int, str, float]:
    """`[start, end]` or `[start, end, type]` (word indices, end exclusive) -> an entity of confidence 1."""
    start, end, kind = (*span, "ENTITY") if len(span) == 2 else span
    if not (isinstance(start, int) and isinstance(end, int) and 0 <= start < end <= num_words):
        raise ValueError(f"{list(span)} is not a word span [start, end) of a text of {num_words} words")
    return start, end, str(kind), 1.0


def _bio_spans(tags: list[str], scores: list[float]) -> list[tuple[int, int, str, float]]:
    """BIO tags of consecutive words -> (start, end, type, mean score). An `I-X` that does not continue an `X`
    starts a new entity (the lenient reading of conlleval/seqeval's default mode)."""
    spans, start, kind = [], None, None
    for i, tag in enumerate([*tags, "O"]):
        prefix, _, name = tag.partition("-") if tag[:2] in ("B-", "I-") else ("B" if tag != "O" else "O", "", tag)
        if start is not None and (prefix != "I" or name != kind):
            spans.append((start, i, kind, sum(scores[start:i]) / (i - start)))
            start = None
        if prefix == "B" or (prefix == "I" and start is None):
            start, kind = i, name
    return spans


def kg_custom_pipelines() -> dict:
    """The `custom_pipelines` entry of an NER checkpoint's config.json (`MSPTForTokenClassification.save_pretrained`):
    `transformers.pipeline(KG_TASK, model=<checkpoint>, trust_remote_code=True)` imports `impl` from the checkpoint's
    copy of this file and loads the NER model with the Auto class `pt` (config.json's `auto_map` names the head)."""
    module = __name__.rsplit(".", 1)[-1]  # "pipeline_mspt", also when imported from a checkpoint's copy
    return {KG_TASK: {"impl": f"{module}.{MSPTKnowledgeGraphPipeline.__name__}",
                      "pt": ["AutoModelForTokenClassification"], "type": "multimodal"}}  # fmt: skip


if KG_TASK not in PIPELINE_REGISTRY.get_supported_tasks():
    PIPELINE_REGISTRY.register_pipeline(
        KG_TASK, pipeline_class=MSPTKnowledgeGraphPipeline, pt_model=_NERCheckpoint, type="multimodal"
    )

__all__ = ["KG_TASK", "MSPTKnowledgeGraphPipeline"]
