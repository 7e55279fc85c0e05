"""The configuration reference: every key of the composed config, its type, default and comment.

`python -m ppo.tools.config_reference` prints it as markdown; the docs site generates its page
"Reference > Every configuration key" from it at build time (`scripts/mkdocs_hooks.py`), so the page cannot
drift from the code. The sources:

- the schema (`ppo/train/config.py`): each dataclass field's type, and the comment above it;
- Hydra's compose API, run exactly as `ppo-train` composes (`compose_train`): once for the default
  config and once for every choice of every config group (`group=choice`), which gives each key's
  default and which choices change it;
- the group files under conf/: their header comments, and the comment above each key of the
  free-form judge nodes (`judge`, `eval_judge`), which the schema types as `Any`. A key a file
  does not comment takes the comment of the file its defaults list pulls it from
  (`/judge_pipeline@_here_`, `/judge/llm@_here_`).

`missing_comments()` lists the keys without one (tests/test_docs.py keeps it empty).
"""

from __future__ import annotations

import ast
import dataclasses
import hashlib
import inspect
import os
import re
import sys
import textwrap
import typing
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import yaml
from omegaconf import OmegaConf

from ppo import resources

# Groups whose choices are whole nodes of their own, documented choice by choice (not key by key).
JUDGE_GROUPS = ("judge", "eval_judge")
# Groups whose choices are named studies and searches: documented as the keys they change.
STUDY_GROUPS = ("experiment", "hparams_search")
# The default shown for `judge` and `eval_judge` themselves: their keys are listed choice by choice.
GROUP_NODE = "(a node per choice: below)"
# Hydra's own key in a judge node; no file comments it because it means the same everywhere.
TARGET_COMMENT = "The judge's class (Hydra's `_target_`): instantiated with the node's other keys, called on a list of pairs."


@dataclass(frozen=True)
class KeyDoc:
    path: str  # dotted, as on the command line: loss.epsilon
    type: str
    default: object
    comment: str


# ---------------------------------------------------------------------------------------------
# Comments: above a dataclass field, above (or beside) a YAML key.


def field_docs(cls) -> dict[str, tuple[str, str]]:
    """Field name -> (its annotation as written, `Optional[list[str]]`; the comment block right above it
    in the class's source, empty when none)."""
    source = textwrap.dedent(inspect.getsource(cls))
    lines = source.splitlines()
    return {node.target.id: (ast.unparse(node.annotation), _comment_above(lines, node.lineno - 1))
            for node in ast.parse(source).body[0].body if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)}


def field_comments(cls) -> dict[str, str]:
    """Field name -> the comment above it (empty when none)."""
    return {name: comment for name, (_, comment) in field_docs(cls).items()}


def _comment_above(lines: list[str], index: int) -> str:
    """The contiguous `#` lines right above lines[index], joined into one paragraph."""
    block = []
    i = index - 1
    while i >= 0 and lines[i].lstrip().startswith("#") and not lines[i].lstrip().startswith("# @package"):
        block.insert(0, lines[i].strip().lstrip("#").strip())
        i -= 1
    return " ".join(part for part in block if part)


_YAML_KEY = re.compile(r"^(\s*)([A-Za-z_][\w.-]*):(.*)$")


def yaml_comments(path: Path) -> dict[str, str]:
    """Dotted key -> its comment in a Hydra YAML file: the block right above the key, then a trailing
    `# ...` on its line (the `defaults` list is left out)."""
    lines = path.read_text().splitlines()
    out, stack = {}, []  # stack: (indent, key) of the mappings the line is inside
    for index, line in enumerate(lines):
        match = _YAML_KEY.match(line)
        if not match:
            continue
        indent, key, rest = len(match.group(1)), match.group(2), match.group(3)
        while stack and stack[-1][0] >= indent:
            stack.pop()
        dotted = ".".join([k for _, k in stack] + [key])
        stack.append((indent, key))
        if dotted.split(".")[0] == "defaults":
            continue
        trailing = rest.split(" #", 1)[1].strip() if " #" in rest and "'" not in rest and '"' not in rest else ""
        out[dotted] = " ".join(part for part in (_comment_above(lines, index), trailing) if part)
    return out


def header_comment(path: Path) -> str:
    """A config file's opening comment block as markdown (its `# @package` line left out): prose lines
    join into paragraphs, indented lines (`#   ppo-train ...`) become a shell block, as written."""
    out, prose, code = [], [], []

    def flush():
        if prose:
            out.extend([_text(" ".join(prose)), ""])
            prose.clear()
        if code:
            out.extend(["```bash", *code, "```", ""])
            code.clear()

    for line in path.read_text().splitlines():
        if not line.startswith("#"):
            break
        if line.startswith("# @package"):
            continue
        text = line[1:]
        if text.startswith("   "):  # a command, kept as written
            if prose:
                flush()
            code.append(text[3:])
        elif text.strip():
            if code:
                flush()
            prose.append(text.strip())
        else:
            flush()
    flush()
    return "\n".join(out).strip()


def _defaults_files(path: Path, config_dir: Path) -> list[Path]:
    """The files a config's defaults list pulls in at its own package (`- /judge/llm@_here_`)."""
    data = yaml.safe_load(path.read_text()) or {}
    found = []
    for entry in data.get("defaults", []) if isinstance(data, dict) else []:
        if isinstance(entry, str) and entry.startswith("/") and "@_here_" in entry:
            target = config_dir / (entry[1:].split("@", 1)[0] + ".yaml")
            if target.is_file():
                found.append(target)
                found.extend(_defaults_files(target, config_dir))
    return found


def node_comments(path: Path, config_dir: Path) -> dict[str, str]:
    """Key -> comment for a group file's own node: its own comments first, then those of the files its
    defaults list pulls in (a key it leaves uncommented keeps the comment of the file that set it)."""
    out: dict[str, str] = {}
    for source in [path] + _defaults_files(path, config_dir):
        for key, comment in yaml_comments(source).items():
            if comment and not out.get(key):
                out[key] = comment
    return out


# ---------------------------------------------------------------------------------------------
# Composition: the default config and one group choice at a time, as ppo-train composes.


def config_groups(config_dir: Path | None = None) -> dict[str, list[str]]:
    """Group -> its choices: every folder of the config directory but Hydra's own (`hydra/`)."""
    config_dir = config_dir or resources.config_dir()
    return {group.name: sorted(p.stem for p in group.glob("*.yaml"))
            for group in sorted(config_dir.iterdir()) if group.is_dir() and group.name != "hydra"}


@lru_cache(maxsize=None)
def composed(override: str | None = None) -> dict:
    """The job config `ppo-train [override] --cfg job` prints, unresolved (`${ppo_cache:}` stays as written)."""
    from ppo.train.config import compose_train

    return OmegaConf.to_container(compose_train([override] if override else []), resolve=False)


def flatten(node, prefix: str = "") -> dict[str, object]:
    """Dotted key -> value of every leaf (a list, or an empty mapping, is a leaf)."""
    out = {}
    for key, value in node.items():
        path = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            out.update(flatten(value, f"{path}."))
        else:
            out[path] = value
    return out


# ---------------------------------------------------------------------------------------------
# The schema's keys.


def schema_keys() -> list[KeyDoc]:
    """Every key of the schema (the typed dataclasses), with the default config's value, in schema order.
    A key inside a mapping-typed field (data.chat_template_kwargs.enable_thinking) is listed too."""
    from ppo.train.config import PPOConfig

    default = flatten(composed())
    keys: list[KeyDoc] = []

    def walk(cls, prefix):
        docs, hints = field_docs(cls), typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            path = f"{prefix}{f.name}"
            if dataclasses.is_dataclass(hints[f.name]):
                walk(hints[f.name], f"{path}.")
                continue
            if f.name in JUDGE_GROUPS and not prefix:
                node = GROUP_NODE if composed()[f.name] is not None else None  # eval_judge: null by default
                keys.append(KeyDoc(path, docs[f.name][0], node, docs[f.name][1]))
                continue
            inner = sorted(k for k in default if k.startswith(f"{path}."))
            keys.append(KeyDoc(path, docs[f.name][0], default.get(path, _nested(composed(), path)), docs[f.name][1]))
            for key in inner:  # the entries a mapping-typed field holds by default
                keys.append(KeyDoc(key, _type_of(default[key]), default[key], f"An entry of `{path}` (above)."))

    walk(PPOConfig, "")
    return keys


def _nested(node, path: str):
    """The value at a dotted path of a nested mapping (a mapping-typed field's whole value)."""
    for part in path.split("."):
        node = node[part]
    return node


def _type_of(value) -> str:
    if value is None:
        return "any"  # a free-form key set to null: its type is whatever a value given to it is
    return {bool: "bool", int: "int", float: "float", str: "str", list: "list", dict: "dict"}.get(type(value), type(value).__name__)


def section_comments() -> dict[str, str]:
    """Schema section (`loss`, `logger.wandb`: a field typed by a dataclass) -> the comment above it."""
    from ppo.train.config import PPOConfig

    out = {}

    def walk(cls, prefix):
        comments, hints = field_comments(cls), typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            if dataclasses.is_dataclass(hints[f.name]):
                out[f"{prefix}{f.name}"] = comments[f.name]
                walk(hints[f.name], f"{prefix}{f.name}.")

    walk(PPOConfig, "")
    return out


def choice_changes(groups: dict[str, list[str]]) -> dict[str, list[tuple[str, object]]]:
    """Schema key -> [(`group=choice`, value)] for every choice (of the groups set key by key) that gives it
    a value other than the default config's."""
    default = flatten(composed())
    changes: dict[str, list[tuple[str, object]]] = {}
    for group, choices in groups.items():
        if group in JUDGE_GROUPS + STUDY_GROUPS:
            continue
        for choice in choices:
            for key, value in flatten(composed(f"{group}={choice}")).items():
                if key.split(".")[0] not in JUDGE_GROUPS and default.get(key, _ABSENT) != value:
                    changes.setdefault(key, []).append((f"{group}={choice}", value))
    return changes


_ABSENT = object()


def judge_keys(group: str, choice: str, config_dir: Path) -> list[KeyDoc]:
    """The keys of the `group` node (judge or eval_judge) under `group=choice`, with their comments."""
    node = composed(f"{group}={choice}")[group]
    path = config_dir / group / f"{choice}.yaml"
    comments = node_comments(path, config_dir)
    own = list(yaml_comments(path))  # the choice's own keys first, then those its defaults list brings
    flat = flatten(node)
    keys = []
    for key, value in sorted(flat.items(), key=lambda item: own.index(item[0]) if item[0] in own else len(own)):
        comment = TARGET_COMMENT if key == "_target_" else _comment_of(key, comments)
        keys.append(KeyDoc(f"{group}.{key}", _type_of(value), value, comment))
    return keys


def uncommented_fields(cls, prefix: str = "") -> list[str]:
    """The fields of a schema dataclass (and of the dataclasses it nests) with no comment above them."""
    comments, hints = field_comments(cls), typing.get_type_hints(cls)
    missing = []
    for f in dataclasses.fields(cls):
        if not comments.get(f.name):
            missing.append(f"{prefix}{f.name}")
        if dataclasses.is_dataclass(hints[f.name]):
            missing += uncommented_fields(hints[f.name], f"{prefix}{f.name}.")
    return missing


def uncommented_keys(path: Path, config_dir: Path) -> list[str]:
    """The keys a group file (with the files its defaults list pulls in) sets without a comment; a
    mapping's comment covers its entries, and `_target_` needs none."""
    comments = node_comments(path, config_dir)
    keys = dict.fromkeys(key for source in [path] + _defaults_files(path, config_dir) for key in yaml_comments(source))
    return [key for key in keys if key != "_target_" and not _comment_of(key, comments)]


def _comment_of(key: str, comments: dict[str, str]) -> str:
    """A key's comment, else the nearest enclosing mapping's."""
    parts = key.split(".")
    for end in range(len(parts), 0, -1):
        if comments.get(".".join(parts[:end])):
            return comments[".".join(parts[:end])]
    return ""


def missing_comments(config_dir: Path | None = None) -> list[str]:
    """Every key the reference would show without a comment: schema fields, and the keys of the judge
    groups' files (the schema types those nodes as Any, so their files carry the comments)."""
    from ppo.train.config import PPOConfig

    config_dir = config_dir or resources.config_dir()
    missing = uncommented_fields(PPOConfig)
    for group in JUDGE_GROUPS:
        for choice in config_groups(config_dir).get(group, []):
            path = config_dir / group / f"{choice}.yaml"
            missing += [f"{group}.{key} ({path.relative_to(config_dir)})" for key in uncommented_keys(path, config_dir)]
    return missing


# ---------------------------------------------------------------------------------------------
# Markdown.


def _value(value) -> str:
    """A value as it is written in an override, in a code span."""
    if value is None:
        text = "null"
    elif isinstance(value, bool):
        text = str(value).lower()
    elif isinstance(value, str):
        text = value if value else "''"
    elif isinstance(value, (list, dict)):
        text = yaml.safe_dump(value, default_flow_style=True, width=10_000).strip()
    else:
        text = repr(value)
    return f"`{text}`"  # a | inside a code span needs no escape in a table (Python-Markdown's tables)


def _text(comment: str) -> str:
    """A comment as table-cell markdown: outside code spans `<`, `>`, `*` and `|` are shown as written."""
    parts = comment.split("`")
    for i in range(0, len(parts), 2):  # outside code spans only: inside one, a | does not split the cell
        parts[i] = parts[i].replace("<", "&lt;").replace(">", "&gt;").replace("*", "\\*").replace("|", "\\|")
    return "`".join(parts)


def _table(keys: list[KeyDoc], changes: dict | None = None) -> list[str]:
    rows = ["| key | type | default | description |", "|---|---|---|---|"]
    for k in keys:
        description = _text(k.comment)
        if changes and k.path in changes:
            description += " Changed by " + ", ".join(f"`{choice}`: {_value(value)}" for choice, value in changes[k.path]) + "."
        default = GROUP_NODE if k.default is GROUP_NODE else _value(k.default)
        rows.append(f"| `{k.path}` | `{k.type}` | {default} | {description} |")
    return rows


def fingerprint(config_dir: Path | None = None) -> str:
    """A hash of what the reference is made from (the schema's source and every config file)."""
    from ppo.train import config

    config_dir = config_dir or resources.config_dir()
    digest = hashlib.sha256(Path(config.__file__).read_bytes())
    # os.walk with followlinks: in a checkout conf/experiment is a link to experiments/ (rglob skips it).
    paths = [Path(root) / name for root, _, names in os.walk(config_dir, followlinks=True) for name in names]
    for path in sorted(p for p in paths if p.suffix == ".yaml"):
        digest.update(str(path.relative_to(config_dir)).encode() + path.read_bytes())
    return digest.hexdigest()


INTRO = """# Every configuration key

Generated from the schema (`ppo/train/config.py`: each field's type and the comment above it) and the
config files under `conf/`, composed by Hydra as `ppo-train` composes them: once for the default config
and once for every choice of every group. `python -m ppo.tools.config_reference` prints this page;
`ppo-train [overrides] --cfg job` prints one composed config. Defaults are shown as written, before
interpolation: `${ppo_cache:}` is the per-user cache, `${ppo_asset:NAME}` a file shipped in the package.
"""


@lru_cache(maxsize=4)
def _render(_fingerprint: str) -> str:
    composed.cache_clear()  # the schema or conf/ changed since (mkdocs serve): compose afresh
    config_dir = resources.config_dir()
    groups = config_groups(config_dir)
    default_choice = default_choices(config_dir / "train.yaml")
    out = [INTRO]
    out += _groups_section(config_dir, groups, default_choice)
    out += _schema_section(groups)
    out += _judge_sections(config_dir, groups, default_choice)
    out += _study_sections(config_dir, groups)
    return "\n".join(out).rstrip() + "\n"


def _groups_section(config_dir: Path, groups: dict[str, list[str]], default_choice: dict[str, str]) -> list[str]:
    comments = yaml_comments_of_defaults(config_dir / "train.yaml")
    out = ["## Groups", "", "`ppo-train group=choice` picks a file of `conf/GROUP/`; `--config-dir DIR` adds your own.", "",
           "| group | default | choices | what it sets |", "|---|---|---|---|"]
    for group, choices in groups.items():
        listed = ", ".join(f"`{c}`" for c in choices)
        out.append(f"| `{group}` | `{default_choice.get(group, 'null')}` | {listed} | {_text(comments.get(group, ''))} |")
    launchers = sorted(p.stem for p in (config_dir / "hydra" / "launcher").glob("*.yaml"))
    out += [f"| `hydra/launcher` | Hydra's basic launcher | {', '.join(f'`{c}`' for c in launchers)} | "
            "where a sweep's jobs run ([Sweeps and reports](../how-to/sweeps.md)); not part of the job config |", ""]
    return out


def _schema_section(groups: dict[str, list[str]]) -> list[str]:
    changes, sections, keys = choice_changes(groups), section_comments(), schema_keys()
    out = ["## Keys of the schema", "",
           "`Changed by` names the group choices that give a key another value than the default config's.", ""]
    by_section: dict[str, list[KeyDoc]] = {}
    for k in keys:  # a key goes under the innermost schema section holding it
        holders = [s for s in sections if k.path.startswith(f"{s}.")]
        if holders:
            by_section.setdefault(max(holders, key=len), []).append(k)
    for section, section_keys in by_section.items():
        out += [f"### `{section}`", "", _text(sections[section]), ""] + _table(section_keys, changes) + [""]
    out += ["### Top-level keys", ""] + _table([k for k in keys if "." not in k.path], changes) + [""]
    return out


def _judge_sections(config_dir: Path, groups: dict[str, list[str]], default_choice: dict[str, str]) -> list[str]:
    schema_comments = {k.path: k.comment for k in schema_keys() if k.path in JUDGE_GROUPS}
    out = []
    for group in JUDGE_GROUPS:
        out += [f"## `{group}`: its choices", "", _text(schema_comments[group]), ""]
        for choice in groups.get(group, []):
            mark = " (default)" if default_choice.get(group) == choice else ""
            out += [f"### `{group}={choice}`{mark}", "", header_comment(config_dir / group / f"{choice}.yaml"), ""]
            out += _table(judge_keys(group, choice, config_dir)) + [""]
    return out


def _study_sections(config_dir: Path, groups: dict[str, list[str]]) -> list[str]:
    default_flat = flatten(composed())
    out = []
    for group in STUDY_GROUPS:
        out += [f"## `{group}`: what each choice changes", ""]
        for choice in groups.get(group, []):
            flat = flatten(composed(f"{group}={choice}"))
            changed = [(k, v) for k, v in flat.items() if default_flat.get(k, _ABSENT) != v]
            path = config_dir / group / f"{choice}.yaml"
            out += [f"### `{group}={choice}`", "", header_comment(path), ""]
            if changed:
                out += ["| key | value | default config's |", "|---|---|---|"]
                out += [f"| `{k}` | {_value(v)} | {_value(default_flat[k]) if k in default_flat else '(absent)'} |"
                        for k, v in changed]
                out.append("")
            hydra_settings = flatten((yaml.safe_load(path.read_text()) or {}).get("hydra") or {}, "hydra.")
            if hydra_settings:  # Hydra's own node: not in the job config, but what makes the search
                out += ["Hydra settings it makes (not part of the job config):", "", "| key | value |", "|---|---|"]
                out += [f"| `{k}` | {_value(v)} |" for k, v in hydra_settings.items()] + [""]
    return out


def yaml_comments_of_defaults(train_yaml: Path) -> dict[str, str]:
    """Group -> the comment above its entry in train.yaml's defaults list."""
    lines = train_yaml.read_text().splitlines()
    out = {}
    for index, line in enumerate(lines):
        match = re.match(r"^\s*- (\w+): ", line)
        if match:
            out[match.group(1)] = _comment_above(lines, index)
    return out


def default_choices(train_yaml: Path) -> dict[str, str]:
    """Group -> its choice in train.yaml's defaults list (`null` groups left out)."""
    data = yaml.safe_load(train_yaml.read_text())
    return {k: v for entry in data["defaults"] if isinstance(entry, dict) for k, v in entry.items() if v is not None}


def render() -> str:
    """The reference page, as markdown (cached while the schema and conf/ are unchanged: `mkdocs serve`)."""
    return _render(fingerprint())


def main() -> None:
    sys.stdout.write(render())


if __name__ == "__main__":
    main()
