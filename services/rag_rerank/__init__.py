"""RAG reranking service: the DIG-trained cross-encoder picks the product documents worth
giving an LLM, or none."""
