"""Scaling laws: a sweep of ordinary pretraining runs over model sizes N and token budgets D,
the Chinchilla parametric fit L(N, D) = E + A/N^alpha + B/D^beta with bootstrap intervals,
isoFLOP parabolas, a held-out prediction, and the report (`twofiles scaling plan|run|fit|report`).

The points run as `twofiles pretrain` processes (so a cluster scheduler can run the same commands);
this package never imports the training code.
"""
