"""The documentation site (mkdocs.yml, docs/) and its generated configuration reference.

The site builds with --strict, so a broken link, a missing page or a broken #anchor fails here, as in CI.
The reference (ppo.tools.config_reference) lists every key the composed config has, for the default config
and for every choice of every group, each with a comment. The site is built in this process, so the build
reuses the compositions the reference test made (Hydra composes each config in about 0.2 s of CPU; there
are about 50).
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml

from conftest import ROOT
from ppo import resources
from ppo.tools import config_reference


def leaf_keys(node, prefix=""):
    """Dotted keys of every leaf of a composed config, as `--cfg job` nests them (a list or an empty mapping
    is a leaf)."""
    keys = []
    for key, value in node.items():
        if isinstance(value, dict) and value:
            keys += leaf_keys(value, f"{prefix}{key}.")
        else:
            keys.append(f"{prefix}{key}")
    return keys


def every_group_choice():
    """`group=choice` for every file of every group folder of conf/ (Hydra's own hydra/ aside)."""
    config_dir = resources.config_dir()
    return [f"{group.name}={choice.stem}" for group in sorted(config_dir.iterdir())
            if group.is_dir() and group.name != "hydra" for choice in sorted(group.glob("*.yaml"))]


@pytest.mark.slow
def test_the_reference_lists_every_key_of_every_composed_config():
    page = config_reference.render()
    ppo_train = Path(sys.executable).parent / "ppo-train"  # the console script of the environment running the tests
    printed = yaml.safe_load(subprocess.run([str(ppo_train), "--cfg", "job"], cwd=ROOT, capture_output=True, text=True,
                                            check=True).stdout)
    assert set(leaf_keys(printed)) == set(leaf_keys(config_reference.composed()))  # the CLI composes the same
    choices = every_group_choice()
    assert {"judge=http", "eval_judge=llm", "experiment=demo", "hparams_search=eps_beta_pareto", "ppo_form=token"} <= set(choices)
    missing = [f"{key} ({override})" for override in [None] + choices
               for key in leaf_keys(config_reference.composed(override)) if f"`{key}`" not in page]
    assert missing == []
    # Each judge choice has its own table, so a key is found under the choice that has it.
    http = page.split("### `judge=http`")[1].split("### ")[0]
    assert "`judge.base_url`" in http and "`judge.api_key_env`" in http and "`judge.target_words`" not in http


def test_every_schema_field_and_judge_key_has_a_comment():
    assert config_reference.missing_comments() == []


@dataclass
class _Inner:
    # A commented field.
    commented: int = 1
    bare: int = 2


@dataclass
class _Outer:
    # The nested section.
    inner: _Inner = field(default_factory=_Inner)
    bare_top: str = ""


def test_a_field_without_a_comment_is_found():
    assert config_reference.uncommented_fields(_Outer) == ["inner.bare", "bare_top"]
    assert config_reference.field_comments(_Outer)["inner"] == "The nested section."


def test_a_judge_key_without_a_comment_is_found(tmp_path):
    (tmp_path / "judge").mkdir()
    (tmp_path / "judge_pipeline.yaml").write_text("# The pipeline's order.\norder: both\nbare_shared: 1\n")
    (tmp_path / "judge" / "mine.yaml").write_text(
        "# A header.\ndefaults:\n  - /judge_pipeline@_here_\n  - _self_\n\n"
        "_target_: my.Judge\n# Its own comment.\nsize: 3\nbare: 2\nextra:  # covers what it holds\n  inner: 1\n")
    path = tmp_path / "judge" / "mine.yaml"
    assert config_reference.uncommented_keys(path, tmp_path) == ["bare", "bare_shared"]
    comments = config_reference.node_comments(path, tmp_path)
    assert comments["order"] == "The pipeline's order." and comments["size"] == "Its own comment."


def build_site(site_dir, **overrides):
    """`mkdocs build --strict` of mkdocs.yml into `site_dir`, in this process (mkdocs's own build function)."""
    from mkdocs.commands.build import build
    from mkdocs.config import load_config

    build(load_config(str(ROOT / "mkdocs.yml"), site_dir=str(site_dir), strict=True, **overrides))


@pytest.mark.slow
def test_the_site_builds_strict(tmp_path, monkeypatch):
    monkeypatch.setenv("NO_MKDOCS_2_WARNING", "1")  # Material's end-of-life banner, not a build warning
    build_site(tmp_path / "site")
    assert (tmp_path / "site" / "concepts" / "loss" / "index.html").is_file()
    assert (tmp_path / "site" / "demo" / "headline_win_rate.png").is_file()  # the README's picture, kept in place
    reference = (tmp_path / "site" / "reference" / "config" / "index.html").read_text()
    assert "loss.epsilon" in reference and "eval_judge.name" in reference
    assert "bench_ladder.py" in (tmp_path / "site" / "benchmark-methods" / "index.html").read_text()  # benchmarks/README.md


@pytest.mark.slow
def test_a_broken_link_fails_the_build(tmp_path, monkeypatch, caplog):
    """The strict build above is a real check: a page linking to a missing page or anchor fails it."""
    from mkdocs.exceptions import Abort

    monkeypatch.setenv("NO_MKDOCS_2_WARNING", "1")
    docs = tmp_path / "docs"
    shutil.copytree(ROOT / "docs", docs)
    (docs / "index.md").write_text((docs / "index.md").read_text() + "\n[gone](nowhere.md) [lost](concepts/loss.md#nope)\n")
    with pytest.raises(Abort, match="strict mode"):
        build_site(tmp_path / "site", docs_dir=str(docs))
    assert "nowhere.md" in caplog.text and "#nope" in caplog.text


def test_the_readme_links_resolve_and_keep_the_two_commands():
    """README.md is the landing page on GitHub, outside the mkdocs build: its relative links are checked here."""
    import re

    readme = (ROOT / "README.md").read_text()
    links = [target for target in re.findall(r"\]\(([^)\s]+)\)", readme) if not target.startswith(("http://", "https://"))]
    assert len(links) > 20
    broken = [target for target in links if not (ROOT / target.split("#")[0]).exists()]
    assert broken == []
    assert "bash scripts/setup.sh && .venv/bin/python -m pytest -q" in readme  # the test command CI runs
    assert "bash scripts/setup.sh && .venv/bin/ppo-train experiment=demo" in readme
    assert len(readme.splitlines()) < 250  # a landing page: the rest lives in docs/
