"""Knowledge bases: reading and chunking sources, embeddings, the vector index, retrieval and RAG (issue 10)."""
