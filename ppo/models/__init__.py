"""Models from outside the project, made into folders that `mlx_lm.load` and `ppo-train model.path=DIR` accept.

`import_gguf` turns a Llama-family GGUF file (llama.cpp's format) into an mlx-lm folder;
`ppo-fetch` (`ppo.models.fetch`) downloads and imports a known one (SmolLM2-135M-Instruct).
"""

from ppo.models.gguf import import_gguf

__all__ = ["import_gguf"]
