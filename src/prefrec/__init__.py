"""prefrec: turn a pretrained causal language model into a personalized ranker."""

__version__ = "0.1.0"
