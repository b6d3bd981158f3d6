"""Self-training (S-Seg+): a standard segmenter trained on a pseudo-label store."""
