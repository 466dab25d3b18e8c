"""Query understanding without gRPC: validate, normalise, correct, match attributes, embed,
classify the category intent and make the retriever's keywords.

Every part comes from the artifact (the catalog's lexicon, the intent head, the query
encoder the retriever's dense source uses), so the service works on any catalog the
pipeline accepts. A batch is encoded and classified in one model call.

Input policy (documented in the proto):

* empty after normalisation, longer than :data:`MAX_QUERY_CHARS` after normalisation, or
  over :data:`MAX_RAW_CHARS` before it: INVALID_ARGUMENT;
* binary (:func:`services.common.text.looks_binary`: a NUL, or more than a tenth of the
  characters are control, private-use or unassigned code points): INVALID_ARGUMENT;
* mixed scripts pass through: they are normalised like any text; the spelling corrector
  leaves non-Latin words alone and the encoder sees the rest as it is.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from services.common.errors import InvalidInputError, VersionMismatchError
from services.common.generated.gensearch.query_understanding.v1 import query_understanding_pb2
from services.common.text import MAX_QUERY_CHARS, looks_binary, normalize_query
from services.common.text_encoder import TextEncoder
from services.query_understanding import metrics
from services.query_understanding.attributes import Attribute, AttributeMatcher
from services.query_understanding.config import QueryUnderstandingSettings
from services.query_understanding.intent import PATH_SEPARATOR, Intent, IntentClassifier
from services.query_understanding.spelling import SpellCorrector

MAX_RAW_CHARS = 4 * MAX_QUERY_CHARS
MAX_TOP_CATEGORIES = 50
#: attributes whose values are worth handing the retriever as keywords
KEYWORD_ATTRIBUTES = ("brand", "material", "size")


def validate_query(raw: str) -> str:
    """The normalised query, or :class:`InvalidInputError` saying why it is refused."""
    if len(raw) > MAX_RAW_CHARS:
        metrics.REJECTED.labels("too_long").inc()
        raise InvalidInputError(f"query is {len(raw)} characters; at most {MAX_RAW_CHARS}")
    if looks_binary(raw):
        metrics.REJECTED.labels("binary").inc()
        raise InvalidInputError("query looks like binary data (control or unassigned characters)")
    text = normalize_query(raw)
    if not text:
        metrics.REJECTED.labels("empty").inc()
        raise InvalidInputError("query is empty after normalisation")
    if len(text) > MAX_QUERY_CHARS:
        metrics.REJECTED.labels("too_long").inc()
        raise InvalidInputError(
            f"query is {len(text)} characters after normalisation; at most {MAX_QUERY_CHARS}"
        )
    return text


def category_keywords(intent: Intent) -> list[str]:
    """The words of the intended category's leaf (``"lab tubing"`` of ``... > Lab Tubing``)."""
    leaf = intent.category.split(PATH_SEPARATOR)[-1]
    return [normalize_query(leaf)] if leaf.strip() else []


def make_keywords(
    query: str,
    attributes: Sequence[Attribute],
    intents: Sequence[Intent],
    min_probability: float,
    limit: int,
) -> list[str]:
    """Most important first: the intended category (when the head is sure enough), then
    the brand, material and size values found in the query; each once."""
    out: list[str] = []
    if intents and intents[0].probability >= min_probability:
        out.extend(category_keywords(intents[0]))
    out.extend(a.value for a in attributes if a.name in KEYWORD_ATTRIBUTES)
    return [k for k in dict.fromkeys(out) if k][:limit]


@dataclass(slots=True)
class _Parsed:
    normalized: str
    corrected: str
    attributes: list[Attribute] = field(default_factory=list)


class QueryUnderstander:
    """Everything one artifact version knows about queries."""

    def __init__(
        self,
        settings: QueryUnderstandingSettings,
        version: str,
        speller: SpellCorrector,
        matcher: AttributeMatcher,
        encoder: TextEncoder,
        intent: IntentClassifier,
        manifest_sha256: str = "",
    ) -> None:
        if encoder.dim != intent.dim:
            raise ValueError(
                f"encoder gives {encoder.dim}-d vectors, the intent head takes {intent.dim}"
            )
        self.settings = settings
        self.version = version
        self.speller = speller
        self.matcher = matcher
        self.encoder = encoder
        self.intent = intent
        self.manifest_sha256 = manifest_sha256
        self.model_names = ["text_encoder", "query_intent", "lexicon"]

    def _parse(self, raw: str) -> _Parsed:
        text = validate_query(raw)
        corrected = text
        if self.settings.spelling:
            fix = self.speller.correct(text)
            if fix.changes:
                metrics.CORRECTED.inc()
                corrected = fix.text
        return _Parsed(text, corrected, self.matcher.match(corrected))

    def understand(
        self, requests: Sequence[query_understanding_pb2.UnderstandRequest]
    ) -> list[query_understanding_pb2.UnderstandResponse]:
        """One response per request, in order; any invalid request fails the call with
        :class:`InvalidInputError` naming its position."""
        for n, req in enumerate(requests):
            if req.meta.artifact_version and req.meta.artifact_version != self.version:
                raise VersionMismatchError(
                    f"request pinned to artifact {req.meta.artifact_version!r}, "
                    f"this service serves {self.version!r}"
                )
            if not 0 <= req.top_categories <= MAX_TOP_CATEGORIES:
                raise InvalidInputError(
                    f"request {n}: top_categories must be in [0, {MAX_TOP_CATEGORIES}]"
                )
        start = time.perf_counter()
        parsed: list[_Parsed] = []
        for n, req in enumerate(requests):
            try:
                parsed.append(self._parse(req.query))
            except InvalidInputError as exc:
                prefix = f"request {n}: " if len(requests) > 1 else ""
                raise InvalidInputError(f"{prefix}{exc}") from None
        parsed_at = time.perf_counter()
        vectors = self.encoder.encode([p.corrected for p in parsed])
        encoded_at = time.perf_counter()
        k_max = max((r.top_categories or self.settings.default_top_categories) for r in requests)
        intents = self.intent.top(vectors, k_max)
        done = time.perf_counter()
        metrics.STAGE_SECONDS.labels("parse").observe(parsed_at - start)
        metrics.STAGE_SECONDS.labels("encode").observe(encoded_at - parsed_at)
        metrics.STAGE_SECONDS.labels("intent").observe(done - encoded_at)
        s = self.settings
        out = []
        for req, p, vec, found in zip(requests, parsed, vectors, intents, strict=True):
            k = req.top_categories or s.default_top_categories
            response = query_understanding_pb2.UnderstandResponse(
                normalized_query=p.normalized,
                corrected_query=p.corrected,
                keywords=make_keywords(
                    p.corrected, p.attributes, found, s.keyword_min_probability, s.max_keywords
                ),
                attributes=[
                    query_understanding_pb2.QueryAttribute(name=a.name, value=a.value)
                    for a in p.attributes
                ],
                categories=[
                    query_understanding_pb2.CategoryIntent(
                        category=i.category, probability=i.probability
                    )
                    for i in [f for f in found if f.level == 3][:k]
                    + [f for f in found if f.level == 2]
                ],
                artifact_version=self.version,
            )
            if req.want_embedding:
                response.embedding.extend(np.asarray(vec, dtype=np.float32).tolist())
            out.append(response)
        return out
