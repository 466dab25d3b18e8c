"""Offline evaluation: item-level Recall/NDCG for search and recommendation, plus baselines.

Importing this package (and everything except ``baselines.sasrec``) does not import torch.
"""

from models_export.evaluation.metrics import METRIC_NAMES, ndcg_at_k, recall_at_k, target_ranks
from models_export.evaluation.protocol import EvalCase, EvalQuery, Retriever, top_k_rows

__all__ = [
    "METRIC_NAMES",
    "EvalCase",
    "EvalQuery",
    "Retriever",
    "ndcg_at_k",
    "recall_at_k",
    "target_ranks",
    "top_k_rows",
]
