"""Data sources (files, datasets, the demo corpus) and tokenization with a target region."""
