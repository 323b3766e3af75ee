"""smec-dist: Sequential Matryoshka Embedding Compression (SMEC) for LLM retrieval embeddings."""

__version__ = "0.1.0"
