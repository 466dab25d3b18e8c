"""RAG reranking offline: derived product questions, DIG labels from a small LM, the
DIG-trained cross-encoder, its ONNX export and the exact-match evaluation."""
