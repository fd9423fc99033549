"""Looking inside a model: activations by TransformerLens's hook names (run_with_cache,
run_with_hooks), and the pictures built on them (logit lens, attention, attribution, patching,
neurons, embeddings)."""
