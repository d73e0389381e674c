"""Glue for the training frameworks people already use; each module imports its framework, ``import ckpt`` none.

- ``ckpt.integrations.lightning``: ``CkptCallback``, a PyTorch Lightning callback (needs ``lightning``).
- ``ckpt.integrations.transformers``: ``CkptTrainerCallback``, a Hugging Face ``TrainerCallback`` (needs
  ``transformers``).
"""

__all__: list[str] = []
