"""The all-MiniLM-L6-v2 compression benchmark behind ``benchmarks/embedding_minilm.py``."""
