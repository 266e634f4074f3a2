"""The documentation cannot drift from the project: README.md stays a short front page with the commands CI runs, the
configuration reference is what conf/ says, measured tables are what their JSON files say, every documented
``adaptive-ls`` command composes with Hydra, every link resolves (scripts/docs.py does the work; these tests also show
that it catches what it is for)."""
from __future__ import annotations

import importlib.util
import json
import re
import shutil
from pathlib import Path

import pytest

from tests.runs import REPO_ROOT


def load_docs():
    spec = importlib.util.spec_from_file_location("docs_script", REPO_ROOT / "scripts" / "docs.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


docs = load_docs()
README = REPO_ROOT / "README.md"


@pytest.fixture
def copy_of_docs(tmp_path) -> Path:
    """README.md, docs/ and conf/ copied into tmp_path, to break on purpose."""
    shutil.copy(README, tmp_path / "README.md")
    shutil.copytree(REPO_ROOT / "docs", tmp_path / "docs")
    shutil.copytree(REPO_ROOT / "conf", tmp_path / "conf")
    return tmp_path


# ---------------------------------------------------------------------------------------------------------------------
# README


def test_readme_is_a_short_front_page_with_the_commands_ci_runs():
    lines = README.read_text().splitlines()
    assert len(lines) < 300
    code = {line.strip() for line in lines if line.startswith("    ")}
    ci = (REPO_ROOT / ".ci" / "run").read_text().splitlines()
    for command in ('python -m pip install -e ".[dev]"', "python -m pytest -q"):
        assert command in ci  # CI installs and tests exactly as README says
    assert 'pip install -e ".[dev]"' in code and "python -m pytest -q" in code
    assert "adaptive-ls -m experiment=quickstart" in code  # the main job, on the embedded offline data
    for page in docs.pages()[1:]:  # a map of the manual: every page is linked from the front page
        assert f"(docs/{page.relative_to(REPO_ROOT / 'docs').as_posix()})" in README.read_text(), page


def test_readme_names_every_module():
    text = README.read_text()
    modules = [p for p in (REPO_ROOT / "adaptive_ls").rglob("*.py") if p.name not in ("__init__.py", "__main__.py")]
    modules += list((REPO_ROOT / "hydra_plugins").rglob("*_launcher.py"))
    missing = [p.name for p in modules if p.name not in text]
    assert not missing, f"README's 'Where things are' leaves out {missing}"


# ---------------------------------------------------------------------------------------------------------------------
# The configuration reference


def test_configuration_reference_is_generated_from_conf():
    assert (REPO_ROOT / "docs" / "configuration.md").read_text() == docs.config_reference(), \
        "docs/configuration.md differs from conf/: run python scripts/docs.py"


def test_configuration_reference_holds_every_option_key_default_and_comment():
    page = (REPO_ROOT / "docs" / "configuration.md").read_text()
    for path in sorted((REPO_ROOT / "conf").rglob("*.yaml")):
        group = path.parent.relative_to(REPO_ROOT / "conf").as_posix()
        if group != ".":
            assert f"### `{group}={path.stem}`" in page, path
        parsed = docs.read_yaml(path)
        package = "" if parsed.global_package or group == "." else group.replace("/", ".") + "."
        for key, value in docs.flatten(parsed.data):
            if key == "defaults":
                continue
            row = f"| `{package}{key}` | {docs.show(value)} | {docs.cell(parsed.comments.get(key, ''))} |"
            assert row in page, row
    # the comment beside a key, continued on the next line, is kept whole
    assert ("`resume` | `auto` | auto: continue the interrupted run found in the output dir (hydra.run.dir), start "
            "fresh when there is none;") in page


def test_a_changed_conf_makes_the_reference_stale(copy_of_docs):
    conf = copy_of_docs / "conf"
    assert docs.stale(copy_of_docs, conf) == []
    fixed = conf / "smoothing" / "fixed.yaml"
    fixed.write_text(fixed.read_text().replace("eps: 0.1 ", "eps: 0.15") + "floor: 0.0               # a new key\n")
    assert docs.stale(copy_of_docs, conf) == [
        "docs/configuration.md: differs from conf/ (run python scripts/docs.py)"]
    regenerated = docs.config_reference(conf)
    assert "| `smoothing.eps` | `0.15` | -1 <= eps < 1 |" in regenerated
    assert "| `smoothing.floor` | `0.0` | a new key |" in regenerated


# ---------------------------------------------------------------------------------------------------------------------
# Measured tables


def table_refs() -> dict[str, Path]:
    refs = {}
    for page in docs.pages():
        for match in docs.TABLE.finditer(page.read_text()):
            refs[match.group("ref")] = page
    return refs


def test_every_measured_table_is_its_json_rendered_with_machine_date_and_command():
    for page in docs.pages():
        text = page.read_text()
        assert docs.update_tables(text, page) == text, f"{page}: a table differs from its JSON"
    refs = table_refs()
    used = {(page.parent / ref.split("#")[0]).resolve() for ref, page in refs.items()}
    for path in sorted((REPO_ROOT / "docs" / "tables").glob("*.json")):
        assert path.resolve() in used, f"{path.name} is no page's table"
        spec = json.loads(path.read_text())
        tables = spec.get("tables", {"": spec}).values()
        if any(t["rows"] for t in tables):
            assert all(spec.get(k) for k in ("machine", "date", "command")), path.name
            assert re.match(r"\d{4}-\d{2}-\d{2}", spec["date"]), path.name
    rendered = docs.update_tables(README.read_text(), README)
    assert "*Machine:* " in rendered and "*Date:* 2026-12-02" in rendered


def test_a_number_edited_by_hand_in_a_table_is_caught(copy_of_docs):
    page = copy_of_docs / "docs" / "stacked-sweeps.md"
    page.write_text(page.read_text().replace("| basic | 54.6 s |", "| basic | 45.6 s |"))
    assert docs.stale(copy_of_docs, copy_of_docs / "conf") == [
        "docs/stacked-sweeps.md: a measured table differs from its JSON (run python scripts/docs.py)"]


def test_a_report_becomes_a_measured_table(tmp_path):
    """``docs.py table``: the report's own table, its numbers as the report wrote them, with machine, date, command."""
    report = tmp_path / "report.md"
    table = ["| policy | noise | rate | n | test acc (%) | memorised (%) |", "|---|---|---|--:|--:|--:|",
             "| none | sym40 | 0.4 | 2 | 45.59 ± 0.12 | 100.00 |", "| adaptive | none | 0.0 | 2 | 80.10 ± 0.30 | – |"]
    report.write_text("\n".join(["# Sweep report", "", *table, "", "Plots: ..."]) + "\n")
    out = tmp_path / "noise_kinds.json"
    docs.main(["table", str(report), "--out", str(out), "--machine", "2-core CPU", "--date", "2026-12-03",
               "--command", "adaptive-ls -m experiment=cifar10_cpu"])
    spec = json.loads(out.read_text())
    assert spec["machine"] == "2-core CPU" and spec["command"] == "adaptive-ls -m experiment=cifar10_cpu"
    lines = docs.render_table(spec, "noise_kinds.json").splitlines()
    assert lines[2:4] == table[2:4]
    assert lines[1] == "| --- | --- | --- | ---: | ---: | ---: |"
    assert lines[-1] == "*Machine:* 2-core CPU. *Date:* 2026-12-03. *Command:* `adaptive-ls -m experiment=cifar10_cpu`"


def test_no_figure_is_stated_twice_with_different_values():
    """What a page no longer says: the quickstart's time typed in prose, project targets, 'unmeasured' repeated."""
    text = "\n".join(page.read_text() for page in docs.pages())
    for phrase in ("2 min 50 s", "1 min 43 s", "target for", "≥3×", "≥ 4×", "out of reach", "Its target"):
        assert phrase not in text, phrase
    assert len(re.findall(r"unmeasured", text, re.I)) == 1


# ---------------------------------------------------------------------------------------------------------------------
# Documented commands


@pytest.fixture(scope="module")
def command_errors():
    return docs.command_errors(docs.pages())


def test_every_documented_command_composes(command_errors):
    found = [command for page in docs.pages() for _, command in docs.documented_commands(page.read_text())]
    assert len(found) > 40  # the extraction sees the documentation's commands
    assert "adaptive-ls -m experiment=quickstart" in found
    assert ("OMP_NUM_THREADS=1 adaptive-ls -m experiment=cifar10_cpu hydra/launcher=joblib_2 "
            "data.root=<cifar10 root>") in found
    assert command_errors == []


def test_commands_are_found_in_blocks_spans_and_continued_lines():
    text = "\n".join([
        "Run `adaptive-ls smoothing=fixed` or `adaptive-ls-report x`.", "",
        "    $ OMP_NUM_THREADS=1 adaptive-ls -m seed=0,1 \\", "        noise.rate=0.2   # two jobs", "",
        "```bash", "python -m adaptive_ls data=digits  # the same command", "python -m adaptive_ls.report x", "```"])
    assert docs.documented_commands(text) == [
        (1, "adaptive-ls smoothing=fixed"),
        (3, "OMP_NUM_THREADS=1 adaptive-ls -m seed=0,1 noise.rate=0.2"),
        (7, "python -m adaptive_ls data=digits")]
    assert docs.overrides_of("adaptive-ls <the same overrides> data.root=<cifar10 root> ...") == (
        False, ["data.root=PLACEHOLDER"])


def test_a_broken_documented_override_is_caught(tmp_path):
    page = tmp_path / "page.md"
    page.write_text("\n".join([
        "    adaptive-ls data=cifar10 data.root=<cifar10 root> smoothing=fixed smoothing.eps=0.2",  # fine
        "    adaptive-ls smoothing=fixed smoothing.epz=0.2",  # a key that does not exist
        "    adaptive-ls smoothing=halved",  # an option that does not exist
        "    adaptive-ls -m smoothing=fixed,self_distil seed=0,1",  # the second value of a sweep
        "    adaptive-ls -m smoothing=none,fixed smoothing.eps=0.1",  # a key that only some jobs of the grid have
    ]))
    errors = docs.command_errors([page])
    assert [e.split(":")[1] for e in errors] == ["2", "3", "4", "5"], errors
    assert "smoothing.epz" in errors[0] and "smoothing/halved" in errors[1] and "self_distil" in errors[2]
    assert "smoothing.eps" in errors[3]


# ---------------------------------------------------------------------------------------------------------------------
# Links and file references


def test_every_relative_link_resolves():
    assert docs.link_errors(docs.pages()) == []


def test_a_broken_link_or_anchor_is_caught(tmp_path):
    (tmp_path / "other.md").write_text("# Other\n\n## A fast model: `model=fastnet`\n")
    page = tmp_path / "page.md"
    page.write_text("[ok](other.md#a-fast-model-modelfastnet) [gone](missing.md) [bad](other.md#nowhere) "
                    "![img](pic.png) [web](https://example.org/x.md)\n")
    assert docs.link_errors([page]) == [f"{page}: link to missing.md: no such file",
                                        f"{page}: link to other.md#nowhere: no such heading",
                                        f"{page}: link to pic.png: no such file"]


def test_code_and_config_name_only_documents_that_exist():
    """Docstrings and comments point readers to files of the project, not to documents it does not have."""
    outputs = {"report.md", "summary.md"}  # what the report and the GPU benchmark write
    sources = [*(REPO_ROOT / "adaptive_ls").rglob("*.py"), *(REPO_ROOT / "hydra_plugins").rglob("*.py"),
               *(REPO_ROOT / "scripts").glob("*"), *(REPO_ROOT / "conf").rglob("*.yaml")]
    for source in sources:
        for name in re.findall(r"[\w./-]+\.md\b", source.read_text()):
            if Path(name).name in outputs or name.startswith("."):
                continue
            assert (REPO_ROOT / name).exists() or (REPO_ROOT / "docs" / name).exists(), f"{source}: {name}"
