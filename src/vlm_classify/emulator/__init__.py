"""A built-in emulator of the OpenAI and Azure OpenAI APIs: chat completions with images
answered from a manifest's ground truth, files, batches, fine-tuning jobs and models, with
injectable faults and replayed latencies, so the whole tool runs and is tested offline.
"""

from __future__ import annotations

from .app import AZURE_API_VERSION, Emulator
from .config import EmulatorConfig, FaultRates, parse_faults
from .state import Stats

__all__ = ["AZURE_API_VERSION", "Emulator", "EmulatorConfig", "FaultRates", "Stats", "parse_faults"]
