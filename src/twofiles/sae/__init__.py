"""Sparse autoencoders on residual-stream activations: training (TopK, ReLU-L1), the field's
metrics, feature dashboards, and steering directions."""
