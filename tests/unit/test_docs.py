"""The generated references (docs/configuration.md, docs/admin.md, docs/cli.md) against the code, and the
whole site built by MkDocs in strict mode (a broken link or anchor fails)."""

import dataclasses
import importlib.util
import re
import subprocess
import sys
from pathlib import Path

import pytest

from lb import cli
from lb.core import commands, values
from lb.core.config import Config, parse_config

ROOT = Path(__file__).resolve().parents[2]
_spec = importlib.util.spec_from_file_location("docs_gen", ROOT / "docs" / "gen.py")
gen = sys.modules["docs_gen"] = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(gen)


def test_every_config_key_has_a_note_and_every_note_a_key():
    paths = [key.path for key in gen.schema_keys()]
    assert [p for p in paths if p not in gen.CONFIG_NOTES] == [], "keys without a note in docs/gen.py"
    assert [p for p in gen.CONFIG_NOTES if p not in paths] == [], "notes for keys the schema no longer has"


def test_every_command_has_a_note_and_every_note_a_command():
    names = [gen.command_name(c) for c in commands.COMMANDS]
    assert [n for n in names if n not in gen.COMMAND_NOTES] == [], "commands without a note in docs/gen.py"
    assert [n for n in gen.COMMAND_NOTES if n not in names] == [], "notes for commands that are gone"


def test_every_lb_command_has_an_intro_and_every_intro_a_command():
    assert sorted(gen._subcommands(cli.build_parser())) == sorted(gen.CLI_INTRO)


def test_the_embedded_default_says_what_the_schema_defaults_are():
    # The reference lists the schema's defaults and quotes lb.yaml: they must agree.
    embedded = parse_config(gen.EMBEDDED.read_text(), "lb.yaml")
    assert embedded == dataclasses.replace(Config(), backends=embedded.backends)


@pytest.mark.parametrize("value, parse, written", [
    (30.0, values.parse_duration, "30s"),
    (0.5, values.parse_duration, "500ms"),
    (3600.0, values.parse_duration, "1h"),
    (1024.0, gen.schema.parse_rate, "1KiB/s"),
    (0o600, gen.schema.AdminConfig.__dataclass_fields__["mode"].metadata["parse"], '"0600"'),
    (("127.0.0.1", 9900), values.parse_hostport, "127.0.0.1:9900"),
    ((), gen.schema.Config.__dataclass_fields__["trusted_proxies"].metadata["parse"], "[]"),
])
def test_a_default_is_written_as_the_config_writes_it(value, parse, written):
    assert gen.render_default(value, parse) == written


def test_a_default_no_notation_reads_back_is_an_error():
    with pytest.raises(ValueError):
        gen.render_default(7.25, gen.schema.parse_weight_value)


def test_the_committed_references_are_what_the_generator_writes_now():
    assert gen.stale() == [], "run `make docs-gen` and commit the references it rewrites"


def test_the_site_builds_in_strict_mode(tmp_path):
    pytest.importorskip("mkdocs", reason="mkdocs comes with the test extra: `make test` installs it")
    result = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--quiet", "-f",
                             str(ROOT / "mkdocs.yml"), "-d", str(tmp_path / "site")],
                            capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert result.returncode == 0, result.stdout + result.stderr


def _recipe(text: str, heading: str = "## Draining a node: the admin socket") -> str:
    section = text[text.index("\n" + heading + "\n"):]
    return re.search(r"^```sh\n(.*?)^```$", section, re.S | re.M).group(1)


def test_the_drain_recipe_in_the_docs_is_the_one_the_readme_test_runs():
    # tests/e2e/test_readme_recipe.py runs the README's block; the docs show the same one.
    assert _recipe((ROOT / "docs" / "deploying.md").read_text()) == _recipe((ROOT / "README.md").read_text())


@pytest.mark.parametrize("name", ["README.md", *sorted(p.name for p in (ROOT / "docs").glob("*.md"))])
def test_every_relative_link_stays_in_the_repository_and_finds_its_file(name):
    path = ROOT / name if name == "README.md" else ROOT / "docs" / name
    for target in re.findall(r"\]\(([^)\s]+)\)", path.read_text()):
        if re.match(r"[a-z]+:", target) or target.startswith("#"):
            continue
        resolved = (path.parent / target.split("#")[0]).resolve()
        assert resolved.is_relative_to(ROOT), f"{name} links outside the repository: {target}"
        assert resolved.exists(), f"{name} links to a missing file: {target}"


def _expand(pattern: str) -> list[str]:
    """`a-{x,y}-N.json` -> the globs `a-x-[0-9].json`, `a-y-[0-9].json`."""
    match = re.search(r"\{([^}]*)\}", pattern)
    if match is None:
        return [re.sub(r"(?<=-)N(?=[.-])", "[0-9]", pattern)]
    return [g for alt in match.group(1).split(",")
            for g in _expand(pattern[:match.start()] + alt + pattern[match.end():])]


@pytest.mark.parametrize("name", sorted(p.name for p in (ROOT / "docs").glob("*.md")))
def test_every_result_file_a_page_cites_is_in_bench_results(name):
    text = (ROOT / "docs" / name).read_text()
    for cited in set(re.findall(r"bench/results/([A-Za-z0-9_.*{},\-]+\.(?:json|png))", text)):
        for pattern in _expand(cited):
            assert list((ROOT / "bench" / "results").glob(pattern)), f"{name} cites bench/results/{cited}: none found"


@pytest.mark.parametrize("name", ["README.md", *sorted(p.name for p in (ROOT / "docs").glob("*.md"))])
def test_every_file_of_the_repository_a_page_names_exists(name):
    # Modules move (core/http1 became a package, the processes went to lb/process): a page
    # that names a file must follow it.
    path = ROOT / name if name == "README.md" else ROOT / "docs" / name
    for named in re.findall(r"`((?:lb|tests|bench|config)/[A-Za-z0-9_./-]+)", path.read_text()):
        if "bench/results/" not in named:
            assert (ROOT / named.rstrip(".:")).exists(), f"{name} names {named}, which is not in the repository"
