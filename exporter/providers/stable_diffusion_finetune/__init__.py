"""Stable Diffusion API (ModelsLab) fine-tunes: the provider `stable_diffusion_finetune`.

`api.py` asks for a job's status (and lists jobs, where the API can) and reads the answers;
`simulator.py` is its part of the simulator, written from the vendor's documents and not from
`api.py`, so that it is an independent oracle; `fixtures/` holds real answers.
"""

from exporter.providers.stable_diffusion_finetune.api import PROVIDER, parse_step

__all__ = ["PROVIDER", "parse_step"]
