"""Sentence-transformers encoder and FAISS collections that feed retrieval context."""
