"""lorasweep: LoRA or full fine-tuning, settled by experiment on your model and data."""

__version__ = "0.1.0"
