"""mkdocs hooks (mkdocs.yml `hooks:`): pages generated at every build, never written into docs/.

- reference/config.md: every configuration key, from `ppo.tools.config_reference` (Hydra's compose
  API over conf/, the schema's comments), the same text `python -m ppo.tools.config_reference` prints.
- benchmark-methods.md: benchmarks/README.md as it stands (what each script measures and how), so
  the benchmark scripts keep one description, next to them, and the site shows that one.

Why hooks and not mkdocs-gen-files: mkdocs 1.6 has hooks built in, so no plugin package is needed;
the pages are made in memory (`File.generated`), so no stale copy can be committed.
"""

from __future__ import annotations

from pathlib import Path

from mkdocs.structure.files import File

REFERENCE_PAGE = "reference/config.md"
BENCHMARK_METHODS_PAGE = "benchmark-methods.md"


def on_files(files, config):
    from ppo.tools.config_reference import render

    root = Path(config.config_file_path).parent
    files.append(File.generated(config, REFERENCE_PAGE, content=render()))
    files.append(File.generated(config, BENCHMARK_METHODS_PAGE, content=(root / "benchmarks" / "README.md").read_text()))
    return files
