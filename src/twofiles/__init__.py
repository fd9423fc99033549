"""twofiles: an LLM is two files, a parameters file and a short program that runs it.

Importing the package does no work: submodules are imported by the code that needs them.
"""

__version__ = "0.2.0.dev0"
