"""The second file: `run.py`, a model.safetensors runner that needs only Python and numpy."""
