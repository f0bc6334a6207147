"""sleepjax: hybrid attention / gated-delta-rule language models that sleep (arXiv 2605.26099)."""

__version__ = "0.1.0"
