"""From stored content to searchable chunks: text extraction, chunking, embeddings (issue 19)."""
