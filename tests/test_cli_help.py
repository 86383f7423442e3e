"""Every flag of main.py and of every script has a help text that shows its default, and
--help answers without importing torch."""
import importlib.util
import os
import subprocess
import sys

import pytest

from conftest import ROOT

SCRIPTS = ["main.py"] + sorted(
    os.path.join("earlybird_scripts", f) for f in os.listdir(os.path.join(ROOT, "earlybird_scripts"))
    if f.endswith(".py") and not f.startswith("_"))


def _module(script):
    sys.path.insert(0, os.path.join(ROOT, "earlybird_scripts"))
    try:
        spec = importlib.util.spec_from_file_location(
            "script_" + os.path.basename(script)[:-3], os.path.join(ROOT, script))
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        return mod
    finally:
        sys.path.pop(0)


def _parser(script):
    return _module(script).build_parser()


def test_the_study_page_quotes_a_command_that_pastes_without_notes_or_page_only():
    page_command = _module("earlybird_scripts/study.py").page_command
    assert page_command(["--config", "digits.yml", "--note", "two words", "--note=x y",
                         "--out", "a b.md", "--page_only"]) == "--config digits.yml --out 'a b.md'"


@pytest.mark.parametrize("script", SCRIPTS)
def test_every_flag_has_a_help_text_with_its_default(script):
    parser = _parser(script)
    flags = [a for a in parser._actions if a.option_strings and a.dest != "help"]
    assert flags
    for a in flags:
        text = a.help or ""
        assert text, (script, a.option_strings)
        says_default = "default" in text or a.required or "not supported" in text
        assert says_default, (script, a.option_strings, text)
    for a in parser._actions:
        if not a.option_strings:  # positionals say what they are
            assert a.help, (script, a.dest)


@pytest.mark.parametrize("script", SCRIPTS)
def test_help_does_not_import_torch(script):
    code = ("import runpy, sys\n"
            f"sys.argv = [{script!r}, '--help']\n"
            f"sys.path.insert(0, {os.path.join(ROOT, 'earlybird_scripts')!r})\n"
            f"sys.path.insert(0, {ROOT!r})\n"
            "try:\n"
            f"    runpy.run_path({os.path.join(ROOT, script)!r}, run_name='__main__')\n"
            "except SystemExit:\n"
            "    pass\n"
            "print('TORCH' if 'torch' in sys.modules else 'NO TORCH')\n")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT,
                         timeout=60)
    assert res.stdout.strip().endswith("NO TORCH"), res.stdout[-500:] + res.stderr[-500:]
    assert "usage:" in res.stdout
