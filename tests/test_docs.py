"""The documentation site (mkdocs.yml, docs/): it builds with --strict, so a broken link, a missing page or a
broken #anchor fails here, as in CI."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from conftest import ROOT


def mkdocs_build(site_dir, config_file=ROOT / "mkdocs.yml"):
    """`mkdocs build --strict` of `config_file` into `site_dir`, as a user runs it."""
    env = dict(os.environ, NO_MKDOCS_2_WARNING="1")  # Material's end-of-life banner, not a build warning
    return subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--config-file", str(config_file),
                           "--site-dir", str(site_dir)], cwd=ROOT, env=env, capture_output=True, text=True)


def test_site_builds_strict(tmp_path):
    done = mkdocs_build(tmp_path / "site")
    assert done.returncode == 0, done.stderr[-3000:]
    assert (tmp_path / "site" / "concepts" / "loss" / "index.html").is_file()
    assert (tmp_path / "site" / "demo" / "headline_win_rate.png").is_file()  # the README's picture, kept in place


def test_broken_link_fails_the_build(tmp_path):
    """The strict build above is a real check: a page linking to a missing page or anchor fails it."""
    import shutil

    docs = tmp_path / "docs"
    shutil.copytree(ROOT / "docs", docs)
    (docs / "index.md").write_text((docs / "index.md").read_text() + "\n[gone](nowhere.md) [lost](concepts/loss.md#nope)\n")
    config = tmp_path / "mkdocs.yml"
    config.write_text((ROOT / "mkdocs.yml").read_text().replace("docs_dir: docs", f"docs_dir: {docs}"))
    done = mkdocs_build(tmp_path / "site", config)
    assert done.returncode != 0
    assert "nowhere.md" in done.stderr and "#nope" in done.stderr
