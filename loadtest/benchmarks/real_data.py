"""The REAL catalog and behaviour log as generator training data, without an artifact: the
dataset of the environment (``models_export.dataset_files``) ingested as the pipeline does,
with a published SID index (``published:<variant>``; 256-code books) as the item SIDs."""

from __future__ import annotations

import tempfile
from pathlib import Path

from models_export import dataset_files, ingest
from models_export.generator.dataset import TrainingData, load_training_data
from models_export.generator.train import load_sids

#: collisions removed (one SID per item), as the served tokenizer's SIDs are
DEFAULT_SIDS = "published:rqvae_zcr"


def real_training_data(sids: str = DEFAULT_SIDS) -> TrainingData:
    """Items, leave-one-out user splits and SIDs (``sids`` as ``train --sids`` reads it)."""
    files = dataset_files.named()
    result = ingest.ingest_dataset(files)
    with tempfile.TemporaryDirectory(prefix="gensearch-real-") as tmp:
        tables = Path(tmp)
        ingest.write_tables(result, tables)
        item_ids = [i.item_id for i in result.items]
        codes, sizes = load_sids(sids, tables, item_ids, files)
        return load_training_data(tables, codes, sizes)
