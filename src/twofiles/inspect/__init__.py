"""Looking inside a model: activations by TransformerLens's hook names (run_with_cache,
run_with_hooks), and the pictures built on them (logit lens, attention, attribution, patching,
neurons, embeddings)."""

from twofiles.inspect.hooks import (
    ActivationCache,
    HookFn,
    HookPoint,
    activation_at,
    as_transformer,
    attached,
    hook_names,
    long_name,
    run_with_cache,
    run_with_hooks,
)

__all__ = [
    "ActivationCache",
    "HookFn",
    "HookPoint",
    "activation_at",
    "as_transformer",
    "attached",
    "hook_names",
    "long_name",
    "run_with_cache",
    "run_with_hooks",
]
