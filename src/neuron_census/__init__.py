"""neuron-census: streaming statistics of every FFN neuron of a causal language model."""

__version__ = "0.1.0"
