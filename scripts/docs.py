"""Keep README.md and docs/ true to the project: the generated configuration reference, the measured tables, the
documented commands and the links.

    python scripts/docs.py            # rewrite docs/configuration.md from conf/ and every measured table from its JSON
    python scripts/docs.py --check    # change nothing; list what is out of date, every documented command that
                                      # does not compose and every link that does not resolve; exit 1 if any
    python scripts/docs.py table multirun/<sweep>/report.md --out docs/tables/NAME.json \
        --machine "..." --date YYYY-MM-DD --command "adaptive-ls -m ..."   # a report's table as a measured table's JSON

The configuration reference is built from conf/ alone: every group, option, key and default, with the comment that
sits beside it in the yaml. A measured table sits in a page between ``<!-- table: tables/NAME.json -->`` and
``<!-- end table -->``; its rows, columns, machine, date and command live in that JSON file beside the pages, so a
figure is typed once. Every ``adaptive-ls ...`` command in a code block or code span is composed with Hydra, as
``adaptive-ls`` would compose it (each value of a sweep, with the experiment's own grid), without training.
"""
from __future__ import annotations

import argparse
import json
import re
import shlex
import sys
from pathlib import Path
from typing import Any, Iterator, Optional

import yaml

ROOT = Path(__file__).resolve().parent.parent
CONF = ROOT / "conf"
DOCS = ROOT / "docs"
CONFIG_PAGE = DOCS / "configuration.md"

# ---------------------------------------------------------------------------------------------------------------------
# The configuration reference
# ---------------------------------------------------------------------------------------------------------------------

_KEY = re.compile(r"^(?P<indent>\s*)(?P<item>-\s+)?(?P<key>[\w./@-]+):(?:\s+(?P<value>.*?))?\s*$")


class YamlFile:
    """One conf/ file: its parsed content, its header comment and the comment beside (or just above) each key."""

    def __init__(self, path: Path, data: Any):
        self.path, self.data = path, data
        self.header: list[str] = []
        self.notes: list[str] = []  # comment blocks that stand alone between keys
        self.comments: dict[str, str] = {}  # dotted key in the file -> comment
        self.defaults_comments: dict[str, str] = {}  # defaults entry -> comment
        self.global_package = False


def split_comment(line: str) -> tuple[str, Optional[str]]:
    """``key: value  # comment`` -> (``key: value``, ``comment``); a ``#`` inside quotes is not a comment."""
    quote = None
    for i, char in enumerate(line):
        if char in "'\"":
            quote = None if quote == char else (quote or char)
        elif char == "#" and quote is None and (i == 0 or line[i - 1].isspace()):
            return line[:i].rstrip(), line[i + 1:].strip()
    return line.rstrip(), None


def read_yaml(path: Path) -> YamlFile:
    """Parse ``path`` and attach its comments to the keys they describe: a comment on a key's line (and the comment
    lines indented below it that continue it), or a block of comment lines right above a key."""
    text = path.read_text()
    out = YamlFile(path, yaml.safe_load(text) or {})
    stack: list[tuple[int, str]] = []  # (indent, key) of the enclosing mappings
    pending: list[str] = []  # comment lines waiting for the key below them
    last: Optional[tuple[str, str, int]] = None  # (kind, key, column of its comment) a continuation extends
    in_defaults = False
    seen_key = False
    for raw in text.splitlines():
        code, comment = split_comment(raw)
        if not code.strip():
            if comment is None:  # a blank line ends a block of comments: it belongs to no key
                if pending:
                    (out.notes if seen_key else out.header).append(" ".join(pending))
                    pending = []
                last = None
                continue
            if comment.startswith("@package"):
                out.global_package = "_global_" in comment
                continue
            column = len(raw) - len(raw.lstrip())
            if last is not None and column >= last[2] and not pending:
                kind, key, _ = last
                target = out.defaults_comments if kind == "defaults" else out.comments
                target[key] = f"{target[key]} {comment}".strip()
            else:
                pending.append(comment)
                last = None
            continue
        match = _KEY.match(code)
        indent = len(raw) - len(raw.lstrip())
        if match is None:  # a list item without a key (`- checkpoint`), or a value on its own line
            if in_defaults and code.strip().startswith("- "):
                entry = code.strip()[2:].strip()
                if comment:
                    out.defaults_comments[entry] = comment
                    last = ("defaults", entry, raw.index("#"))
                pending = []
            continue
        key = match.group("key")
        if match.group("item") and in_defaults and indent <= 2:
            entry = key
            if comment:
                out.defaults_comments[entry] = comment
                last = ("defaults", entry, raw.index("#"))
            pending = []
            continue
        if match.group("item"):  # a mapping inside a list: part of its parent's value
            pending, last = [], None
            continue
        while stack and stack[-1][0] >= indent:
            stack.pop()
        dotted = ".".join([k for _, k in stack] + [key])
        stack.append((indent, key))
        in_defaults = dotted == "defaults"
        if not seen_key and pending:  # the comment block at the top of the file describes the file
            out.header.append(" ".join(pending))
            pending = []
        seen_key = True
        words = [*pending, comment] if comment else pending
        if words:
            out.comments[dotted] = " ".join(words)
        last = ("key", dotted, raw.index("#")) if comment else None
        pending = []
    if pending:
        out.notes.append(" ".join(pending))
    return out


def flatten(data: Any, prefix: str = "") -> Iterator[tuple[str, Any]]:
    """(dotted key, leaf value) pairs of a mapping; lists and empty mappings are leaves."""
    for key, value in data.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            yield from flatten(value, f"{dotted}.")
        else:
            yield dotted, value


def show(value: Any) -> str:
    """A yaml value as the command line would write it, in a code span."""
    if isinstance(value, str):
        text = value if value else '""'
    else:
        text = yaml.safe_dump(value, default_flow_style=True, width=10_000).strip()
        text = text[:-4] if text.endswith("\n...") else text
    return f"`{text}`".replace("|", "\\|")


def cell(text: str) -> str:
    return text.replace("|", "\\|")


def defaults_entries(file: YamlFile) -> list[tuple[str, str]]:
    """(entry as written, its comment) of a file's defaults list, ``_self_`` left out."""
    entries = []
    for item in file.data.get("defaults", []) if isinstance(file.data, dict) else []:
        if item == "_self_":
            continue
        key, value = (item, None) if isinstance(item, str) else next(iter(item.items()))
        text = key if isinstance(item, str) else f"{key}: {'null' if value is None else value}"
        entries.append((text, file.defaults_comments.get(key, "")))
    return entries


MAPPING = object()  # a row for a mapping, whose keys follow


def key_table(file: YamlFile, package: str) -> list[str]:
    """| key | default | what | for every key of ``file`` (a commented mapping gets a row of its own)."""
    rows = []
    for key, value in flatten(file.data):
        if key == "defaults":
            continue
        parts = key.split(".")
        for i in range(1, len(parts)):  # a commented mapping, once, before its first key
            parent = ".".join(parts[:i])
            if parent in file.comments and all(row[0] != parent for row in rows):
                rows.append((parent, MAPPING, file.comments[parent]))
        rows.append((key, value, file.comments.get(key, "")))
    if not rows:
        return []
    lines = ["| key | default | what |", "| --- | --- | --- |"]
    for key, value, comment in rows:
        default = "(the keys below)" if value is MAPPING else show(value)
        lines.append(f"| `{package}{key}` | {default} | {cell(comment)} |")
    return lines


def group_defaults(top: YamlFile) -> list[tuple[str, Optional[str], str]]:
    """(group, default option, comment) in conf/config.yaml's defaults list."""
    groups = []
    for text, comment in defaults_entries(top):
        group, _, option = text.partition(": ")
        groups.append((group, None if option in ("null", "None") else option, comment))
    return groups


def option_section(group: str, option: str, file: YamlFile, default: bool, conf: Path) -> list[str]:
    rel = f"conf/{file.path.relative_to(conf).as_posix()}"
    package = "" if file.global_package else f"{group.replace('/', '.')}."
    title = f"### `{group}={option}`" + (" (default)" if default else "")
    lines = [title, "", f"[`{rel}`](../{rel})" + ("; its keys are global (`@package _global_`)"
                                                    if file.global_package else ""), ""]
    for paragraph in [*file.header, *file.notes]:
        lines += [cell(paragraph), ""]
    entries = defaults_entries(file)
    if entries:
        lines += ["Composes: " + "; ".join(f"`{text}`" + (f" ({comment})" if comment else "")
                                           for text, comment in entries), ""]
    table = key_table(file, package)
    lines += [*table, ""] if table else ["No keys of its own.", ""]
    return lines


def config_reference(conf: Path = CONF) -> str:
    """docs/configuration.md, from conf/ alone."""
    top = read_yaml(conf / "config.yaml")
    groups = group_defaults(top)
    named = [g for g, _, _ in groups]
    others = sorted({p.parent.relative_to(conf).as_posix() for p in conf.rglob("*.yaml")} - {"."} - set(named))
    lines = [
        "# Configuration reference",
        "",
        "<!-- Generated by scripts/docs.py from conf/: do not edit by hand; run `python scripts/docs.py`. -->",
        "",
        "Every config group, its options, and every key with its default and the comment beside it in `conf/`.",
        "",
        "- Pick an option with `group=option`, change a key with `key=value`, e.g.",
        "  `adaptive-ls smoothing=fixed smoothing.eps=0.2 noise.rate=0.2`. Add a key that is not there with",
        "  `+key=value`, remove one with `~key`. A key or option that does not exist is refused before anything runs.",
        "- The composed config is the run's object graph: each group holds a `_target_` and the arguments of its",
        "  constructor, so `hydra.utils.instantiate(cfg.data)` alone gives the noisy data module and",
        "  `hydra.utils.instantiate(cfg.module)` the whole LightningModule ([Extending](extending.md)).",
        "- A value out of range stops the run within seconds, before any data loads, with one line that names the",
        "  key, the value and what is allowed, and exit code 2 ([When things go wrong](faults.md)).",
        "- Options that plugins add: `hydra/launcher=joblib`, `submitit_local`, `submitit_slurm`",
        "  ([Sweeps](sweeps.md#launchers)), `hydra/launcher=stacked` ([Stacked sweeps](stacked-sweeps.md)) and",
        "  `hydra/sweeper=optuna` (`experiment=tune_eps`).",
        "",
        "## Groups",
        "",
        "| group | default | options | what |",
        "| --- | --- | --- | --- |",
    ]
    options = {}
    for group in [*named, *others]:
        folder = conf / group
        names = sorted(p.stem for p in folder.glob("*.yaml")) if folder.is_dir() else []
        options[group] = names
    for group, default, comment in groups:
        lines.append(f"| [`{group}`](#{group.replace('/', '')}) | {f'`{default}`' if default else '–'} | "
                     + ", ".join(f"`{n}`" for n in options[group]) + f" | {cell(comment)} |")
    for group in others:
        lines.append(f"| [`{group}`](#{group.replace('/', '')}) | – | "
                     + ", ".join(f"`{n}`" for n in options[group]) + " | |")
    lines += ["", "## Top level", "", f"[`conf/config.yaml`](../conf/config.yaml)", ""]
    for paragraph in [*top.header, *top.notes]:
        lines += [cell(paragraph), ""]
    lines += [*key_table(top, ""), ""]
    defaults = {g: d for g, d, _ in groups}
    for group in [*named, *others]:
        if not options[group]:
            continue
        lines += [f"## {group}", ""]
        order = sorted(options[group], key=lambda n: (n != defaults.get(group), n))
        for option in order:
            lines += option_section(group, option, read_yaml(conf / group / f"{option}.yaml"),
                                    option == defaults.get(group), conf)
    return "\n".join(lines).rstrip() + "\n"


# ---------------------------------------------------------------------------------------------------------------------
# Measured tables
# ---------------------------------------------------------------------------------------------------------------------

TABLE = re.compile(r"(<!-- table: (?P<ref>[^ ]+) -->\n)(?P<body>.*?)(<!-- end table -->)", re.S)
REQUIRED = ("machine", "date", "command")


def render_value(value: Any, column: dict) -> str:
    if value is None:  # not measured, or not applicable
        return "–"
    if isinstance(value, (int, float)) and not isinstance(value, bool) and column.get("format"):
        text = format(value, column["format"])
    else:
        text = str(value)
    return cell(text + column.get("suffix", "") if isinstance(value, (int, float)) else text)


def render_table(spec: dict, name: str = "") -> str:
    """A measured table from its JSON: the table, then the machine, the date and the command it was measured with.

    ``spec``: ``machine``, ``date``, ``command`` (a string or a list), optional ``notes``, and ``columns`` (a list of
    ``{"name", "align": "left" | "right", "format": a format spec for numbers, "key": the row field}`` or of plain
    names) with ``rows`` (lists in column order, or dicts by column key); or ``tables``: named tables of columns and
    rows (and their own ``notes``), picked by ``NAME.json#table``."""
    table = spec["tables"][name.split("#", 1)[1]] if "#" in name else spec
    if not table["rows"]:  # a table whose run has not been made: say how to make it, claim nothing
        return f"No figures yet. They come from: `{spec['command']}`, then `python scripts/docs.py table`.\n"
    missing = [k for k in REQUIRED if not spec.get(k)]
    if missing:
        raise ValueError(f"{name}: a measured table needs {', '.join(missing)}")
    columns = [c if isinstance(c, dict) else {"name": c} for c in table["columns"]]
    lines = ["| " + " | ".join(cell(c["name"]) for c in columns) + " |",
             "| " + " | ".join("---:" if c.get("align") == "right" else "---" for c in columns) + " |"]
    for row in table["rows"]:
        values = row if isinstance(row, list) else [row.get(c.get("key", c["name"])) for c in columns]
        if len(values) != len(columns):
            raise ValueError(f"{name}: a row has {len(values)} values for {len(columns)} columns: {row}")
        lines.append("| " + " | ".join(render_value(v, c) for v, c in zip(values, columns)) + " |")
    commands = spec["command"] if isinstance(spec["command"], list) else [spec["command"]]
    lines += ["", f"*Machine:* {spec['machine']}. *Date:* {spec['date']}. *Command:* "
              + "; ".join(f"`{c}`" for c in commands)]
    for note in [*([table["notes"]] if table is not spec and table.get("notes") else []),
                 *([spec["notes"]] if spec.get("notes") else [])]:
        lines += ["", note]
    return "\n".join(lines) + "\n"


def table_from_report(report_md: Path, machine: str, date: str, command: list[str]) -> dict:
    """A measured table's JSON from the first table of an ``adaptive-ls-report`` report.md, numbers kept as text
    exactly as the report wrote them."""
    lines = [line for line in report_md.read_text().splitlines()]
    start = next(i for i, line in enumerate(lines) if line.startswith("|"))
    rows = []
    for line in lines[start:]:
        if not line.startswith("|"):
            break
        rows.append([c.strip() for c in line.strip().strip("|").split("|")])
    header, align, body = rows[0], rows[1], rows[2:]
    columns = [{"name": h, **({"align": "right"} if a.endswith(":") else {})} for h, a in zip(header, align)]
    return {"machine": machine, "date": date, "command": command if len(command) > 1 else command[0],
            "columns": columns, "rows": [[None if v in ("–", "") else v for v in row] for row in body]}


def dump_table(spec: dict) -> str:
    """The JSON of a measured table, one column and one row a line."""
    def block(name: str, items: list) -> str:
        return f'  "{name}": [\n' + ",\n".join("    " + json.dumps(i, ensure_ascii=False) for i in items) + "\n  ]"
    parts = [f"  {json.dumps(k)}: {json.dumps(v, ensure_ascii=False)}" for k, v in spec.items()
             if k not in ("columns", "rows")]
    return "{\n" + ",\n".join([*parts, block("columns", spec["columns"]), block("rows", spec["rows"])]) + "\n}\n"


def update_tables(text: str, page: Path) -> str:
    """``text`` with every measured table re-rendered from the JSON file it names (relative to ``page``)."""
    def render(match: re.Match) -> str:
        ref = match.group("ref")
        path = (page.parent / ref.split("#", 1)[0])
        spec = json.loads(path.read_text())
        return match.group(1) + render_table(spec, ref) + match.group(4)

    return TABLE.sub(render, text)


def shown(path: Path) -> str:
    """A page as a reader names it: relative to the repository when it is in it."""
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)


def pages(root: Path = ROOT) -> list[Path]:
    """README.md and every page of docs/."""
    return [root / "README.md", *sorted((root / "docs").rglob("*.md"))]


# ---------------------------------------------------------------------------------------------------------------------
# Documented commands
# ---------------------------------------------------------------------------------------------------------------------

_FENCE = re.compile(r"^```.*?$(.*?)^```", re.S | re.M)
_SPAN = re.compile(r"`([^`\n]+)`")
_START = re.compile(r"(?:^|[\s;(])(?:\$\s+)?((?:[A-Z_]+=\S+\s+)*(?:adaptive-ls|python -m adaptive_ls)(?=\s|$).*)$")


def code_text(text: str) -> list[tuple[int, str]]:
    """(line number, line) of every code line, in the page's order: fenced and indented blocks, and code spans."""
    found, fenced = [], set()
    for match in _FENCE.finditer(text):
        start = text[:match.start()].count("\n") + 1
        for i, line in enumerate(match.group(1).split("\n")[1:]):
            fenced.add(start + 1 + i)
            found.append((start + 1 + i, line))
    for number, line in enumerate(text.split("\n"), 1):
        if number in fenced or line.startswith("```"):
            continue
        if line.startswith("    ") and not line.lstrip().startswith(("-", "*", "|")):
            found.append((number, line))
        else:
            found += [(number, span) for span in _SPAN.findall(line)]
    return sorted(found, key=lambda item: item[0])


def documented_commands(text: str) -> list[tuple[int, str]]:
    """(line, command) of every ``adaptive-ls ...`` (or ``python -m adaptive_ls ...``) command in ``text``, with
    continued lines joined and comments cut."""
    found = []
    joined: Optional[tuple[int, str]] = None
    for number, line in code_text(text):
        if joined is not None:
            joined = (joined[0], joined[1] + " " + line.strip())
        else:
            match = _START.search(split_comment(line)[0].strip()) if "adaptive" in line else None
            if match is None:
                continue
            joined = (number, match.group(1))
        code = split_comment(joined[1])[0]
        if code.endswith("\\"):
            joined = (joined[0], code[:-1].rstrip())
            continue
        found.append((joined[0], code.strip()))
        joined = None
    return found


def overrides_of(command: str) -> tuple[bool, list[str]]:
    """(multirun?, overrides) of a documented command: placeholders such as ``<cifar10 root>`` and shell variables
    become a plain value, a placeholder standing for overrides (``<the same overrides>``) and ``...`` are dropped."""
    command = re.sub(r"<[^<>]+>", "PLACEHOLDER", command)
    command = re.sub(r"\$\{?\w+\}?", "PLACEHOLDER", command)
    tokens = shlex.split(command)
    while tokens and re.fullmatch(r"[A-Z_]+=\S*", tokens[0]):  # OMP_NUM_THREADS=1 ...
        tokens.pop(0)
    tokens = tokens[1:] if tokens[0] == "adaptive-ls" else tokens[3:]  # python -m adaptive_ls
    multirun = any(t in ("-m", "--multirun") for t in tokens)
    overrides = [t for t in tokens if not t.startswith("-") and t not in ("PLACEHOLDER", "...")]
    return multirun, overrides


def compose_all(overrides: list[str], multirun: bool, compose) -> int:
    """Compose every job a command asks for: each value of each swept key (the others at their first value), with
    the experiment's own grid (``hydra.sweeper.params``) under the command line's. Raises what Hydra raises; returns
    the number of configs composed."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parser = OverridesParser.create()

    def lines(parsed) -> dict[str, list[str]]:  # key -> the override lines of each of its values
        return {o.get_key_element(): ([f"{o.get_key_element()}={v}" for v in o.sweep_string_iterator()]
                                      if o.is_sweep_override() else [o.input_line]) for o in parsed}

    choices = lines(parser.parse_overrides(overrides))
    if not multirun:
        compose(overrides)
        return 1
    sweeper = compose([values[0] for values in choices.values()]).hydra.sweeper
    if str(sweeper.get("_target_", "")).endswith("BasicSweeper") and sweeper.get("params"):
        grid = lines(parser.parse_overrides([f"{k}={v}" for k, v in sweeper.params.items()]))
        choices = {**grid, **choices}  # the command line replaces the experiment's grid key by key
    base = {key: values[0] for key, values in choices.items()}
    compose(list(base.values()))
    count = 1
    for key, values in choices.items():
        for value in values[1:]:
            compose(list({**base, key: value}.values()))
            count += 1
    return count


def command_errors(paths: list[Path]) -> list[str]:
    """One line per documented command that Hydra cannot compose: the page, the line, the command, Hydra's word."""
    from hydra import compose, initialize_config_dir

    sys.path.insert(0, str(ROOT))
    from adaptive_ls.cli import CONFIG_DIR

    errors = []
    with initialize_config_dir(version_base="1.3", config_dir=CONFIG_DIR, job_name="docs"):
        composed: dict[tuple, Any] = {}  # pages repeat commands: compose each set of overrides once

        def hydra_compose(overrides: list[str]):
            key = tuple(overrides)
            if key not in composed:
                try:
                    composed[key] = compose(config_name="config", overrides=overrides, return_hydra_config=True)
                except Exception as error:
                    composed[key] = error
            if isinstance(composed[key], Exception):
                raise composed[key]
            return composed[key]

        for path in paths:
            for number, command in documented_commands(path.read_text()):
                try:
                    multirun, overrides = overrides_of(command)
                    compose_all(overrides, multirun, hydra_compose)
                except Exception as error:  # what Hydra says is the finding
                    reason = str(error).strip().splitlines()[0]
                    errors.append(f"{shown(path)}:{number}: `{command}`: {reason}")
    return errors


# ---------------------------------------------------------------------------------------------------------------------
# Links
# ---------------------------------------------------------------------------------------------------------------------

_LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")


def slug(heading: str) -> str:
    """The anchor a Markdown host gives a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"[`*_]|<[^>]+>", "", heading.strip().lower())
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    text = _FENCE.sub("", path.read_text())
    return {slug(m.group(1)) for m in re.finditer(r"^#{1,6}\s+(.*?)\s*$", text, re.M)}


def link_errors(paths: list[Path]) -> list[str]:
    """One line per relative link (or image) in ``paths`` whose file or heading does not exist."""
    errors = []
    for path in paths:
        text = _FENCE.sub("", path.read_text())
        for target in _LINK.findall(text):
            if re.match(r"^[a-z]+:", target):
                continue
            file, _, anchor = target.partition("#")
            resolved = (path.parent / file).resolve() if file else path
            if not resolved.exists():
                errors.append(f"{shown(path)}: link to {target}: no such file")
            elif anchor and resolved.suffix == ".md" and anchor not in anchors(resolved):
                errors.append(f"{shown(path)}: link to {target}: no such heading")
    return errors


# ---------------------------------------------------------------------------------------------------------------------


def stale(root: Path = ROOT, conf: Path = CONF) -> list[str]:
    """The pages whose generated parts differ from what conf/ and the JSON files give."""
    out = []
    page = root / "docs" / "configuration.md"
    if not page.exists() or page.read_text() != config_reference(conf):
        out.append(f"{page.relative_to(root)}: differs from conf/ (run python scripts/docs.py)")
    for path in pages(root):
        text = path.read_text()
        if update_tables(text, path) != text:
            out.append(f"{path.relative_to(root)}: a measured table differs from its JSON (run python scripts/docs.py)")
    return out


def main(argv: Optional[list[str]] = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["table"]:
        table = argparse.ArgumentParser(prog="docs.py table", description="a measured table's JSON from a report.md")
        table.add_argument("report", type=Path, help="the report.md adaptive-ls-report wrote")
        table.add_argument("--out", type=Path, required=True, help="the JSON file under docs/tables/")
        table.add_argument("--machine", required=True, help="what it ran on: CPU or GPU, cores, what shared it")
        table.add_argument("--date", required=True, help="when it ran, YYYY-MM-DD")
        table.add_argument("--command", action="append", required=True, help="the command(s) that measured it")
        args = table.parse_args(argv[1:])
        args.out.write_text(dump_table(table_from_report(args.report, args.machine, args.date, args.command)))
        print(f"wrote {args.out}; name it in a page (<!-- table: tables/{args.out.name} -->) and run "
              f"python scripts/docs.py")
        return 0
    args = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    args.add_argument("--check", action="store_true", help="change nothing; exit 1 when anything is out of date")
    args.add_argument("--no-commands", action="store_true", help="skip composing the documented commands")
    args = args.parse_args(argv)
    if not args.check:
        CONFIG_PAGE.write_text(config_reference())
        for path in pages():
            text = path.read_text()
            if update_tables(text, path) != text:
                path.write_text(update_tables(text, path))
    problems = stale() + link_errors(pages()) + ([] if args.no_commands else command_errors(pages()))
    for line in problems:
        print(line)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
