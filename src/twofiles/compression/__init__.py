"""Pretraining is compression: arithmetic coding driven by a model's next-token probabilities
(`twofiles compress` / `twofiles decompress`), lossless, with a header that pins the model."""
