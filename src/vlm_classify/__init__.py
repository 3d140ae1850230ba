"""vlm-classify: zero-shot versus fine-tuned vision-language models for image classification."""

__version__ = "0.1.0"
