"""Experiments that reproduce a published result end to end on any twofiles model
(`twofiles experiment NAME MODEL`): built-in data, training, evaluation, a table and a plot."""
