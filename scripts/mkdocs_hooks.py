"""mkdocs hooks (mkdocs.yml `hooks:`): the configuration reference page, generated at every build.

Why a hook and not mkdocs-gen-files: mkdocs 1.6 has hooks built in, so the page needs no plugin
package; the page is made in memory (`File.generated`) and never written into docs/, so no stale
copy can be committed. Its markdown comes from `ppo.tools.config_reference` (Hydra's compose API
over conf/, the schema's comments), the same text `python -m ppo.tools.config_reference` prints.
"""

from __future__ import annotations

from mkdocs.structure.files import File

REFERENCE_PAGE = "reference/config.md"


def on_files(files, config):
    from ppo.tools.config_reference import render

    files.append(File.generated(config, REFERENCE_PAGE, content=render()))
    return files
