"""headstart: fine-tune pretrained image models on small datasets, and show which way of doing it works."""

__version__ = "0.1.0"
