"""Options every command shares (glacierflow.cli.common): --config, --quiet/--verbose, --log-file; clean metavars."""

from __future__ import annotations

import io
import logging
import re
from contextlib import redirect_stdout
from pathlib import Path

import pytest

from glacierflow.cli import common
from glacierflow.cli.main import command, main
from glacierflow.storage.cloud import remember


def _help(*path: str) -> str:
    out = io.StringIO()
    with redirect_stdout(out):
        assert main([*path, "--help"]) == 0
    return out.getvalue()


def _paths(cmd=None, path=()):
    cmd = cmd or command()
    yield path
    for name, sub in getattr(cmd, "commands", {}).items():
        yield from _paths(sub, (*path, name))


CLUSTER = ("--cluster WHERE", "--workers N|MIN:MAX", "--cluster-option KEY=VALUE")
STORAGE = ("--storage-option KEY=VALUE",)
DATA_FLAGS = {
    ("build-cube",): CLUSTER + STORAGE, ("flow",): CLUSTER + STORAGE, ("train",): CLUSTER + STORAGE,
    ("evaluate",): CLUSTER + STORAGE, ("predict",): CLUSTER + STORAGE, ("finetune",): CLUSTER + STORAGE,
    ("export",): STORAGE, ("stac",): STORAGE,  # read a store, write files: no Dask graph worth a cluster
    ("plot", "flow"): STORAGE, ("plot", "cube"): STORAGE, ("plot", "forecast"): STORAGE,  # one pair/frame read
    ("stats",): STORAGE,  # one pass over the cube's ndsi per outline, on the threaded scheduler
    ("monitor",): CLUSTER + STORAGE,  # every site on one cluster
    ("demo",): ("--cluster WHERE",),  # a fixed recipe in a local DIR on the twin: where Dask runs, nothing else
}
"""Where the shared data flags make sense. Every other command says here why they do not:"""
NO_DATA_FLAGS = {
    (): "the group", ("twin",): "the group", ("plot",): "the group",
    ("search",): "metadata only: no pixels read, no store written",
    ("models",): "lists the registry",
    ("report",): "walks a local folder of outputs",
    ("plot", "run"): "a run directory is local (loss.csv)",
    ("twin", "make"): "writes a local synthetic world", ("twin", "serve"): "serves a local twin",
}


@pytest.mark.parametrize("path", list(_paths()), ids=lambda p: " ".join(p) or "glacierflow")
def test_help_names_the_shared_options_and_reads_cleanly(path, monkeypatch) -> None:
    monkeypatch.setenv("COLUMNS", "80")
    text = _help(*path)
    assert "--config FILE" in text and "--log-file FILE" in text
    assert max(len(line) for line in text.splitlines()) <= 80
    assert (path in DATA_FLAGS) != (path in NO_DATA_FLAGS), f"say whether {path} takes the data flags"
    shown = {flag for flag in (*CLUSTER, *STORAGE) if re.search(rf"^  {re.escape(flag)}\b", text, re.M)}
    assert shown == set(DATA_FLAGS.get(path, ())), f"glacierflow {' '.join(path)}: data flags {sorted(shown)}"
    usage_and_terms = [line for line in text.splitlines() if line.startswith(("Usage:", "  -", "  ")) and
                       not line.startswith(" " * 10)]
    for line in usage_and_terms:  # typer's raw renderings of Python types never reach the user
        assert not re.search(r"\{[A-Za-z_]+(\.\.\.)?\}|<(str|int|float|path|list\[Path\])>", line), line
    assert "..." not in "".join(text.split("Commands:", 1)[1:]).split("Every command")[0]  # summaries not cut


def test_config_file_sets_options_and_flags_override_it(tmp_path: Path) -> None:
    cfg = tmp_path / "gf.toml"
    cfg.write_text('cluster = "threads"\nmax-cloud = 7\n[build-cube]\nmax_missing = 0.25\n[twin.make]\nseed = 3\n')
    root = command()
    assert common.config_defaults(cfg, root, ("build-cube",)) == {"cluster": "threads", "max_cloud": 7,
                                                                   "max_missing": 0.25}
    assert common.config_defaults(cfg, root, ("twin", "make")) == {"seed": 3}
    rest, defaults = common.apply_shared(root, ["build-cube", "--config", str(cfg), "--max-cloud", "3"])
    assert rest == ["build-cube", "--max-cloud", "3"]  # the typed flag stays and wins over the default map
    assert defaults == {"build-cube": {"cluster": "threads", "max_cloud": 7, "max_missing": 0.25}}


def test_config_value_reaches_the_command_and_a_typed_flag_wins(tmp_path: Path, capsys) -> None:
    cfg = tmp_path / "gf.toml"
    cfg.write_text("[build-cube]\nstart = \"2020-01-01\"\nend = \"2019-01-01\"\n")
    assert main(["build-cube", "--glacier", "parvati", "--config", str(cfg)]) == 2
    assert capsys.readouterr().err.strip() == "error: --start 2020-01-01 must be before --end 2019-01-01"
    assert main(["build-cube", "--glacier", "parvati", "--config", str(cfg), "--end", "2018-06-01"]) == 2
    assert "--end 2018-06-01" in capsys.readouterr().err


@pytest.mark.parametrize("text,suffix,message", [
    ("max_clouds = 3\n", ".toml", "unknown option 'max_clouds' (no command has --max-clouds)"),
    ("[build-cube]\nepochs = 3\n", ".toml", "[build-cube] has no option 'epochs'; see glacierflow build-cube --help"),
    ("[nosuch]\nx = 1\n", ".toml", "[nosuch] is not a command"),
    ("max_cloud = \n", ".toml", "not valid toml"),
    ("build-cube: {max-cloud: 5, nosuch: 1}\n", ".yaml", "[build-cube] has no option 'nosuch'"),
])
def test_config_mistakes_are_one_line_naming_key_and_file(tmp_path: Path, capsys, text, suffix, message) -> None:
    cfg = tmp_path / f"gf{suffix}"
    cfg.write_text(text)
    assert main(["build-cube", "--glacier", "parvati", "--config", str(cfg)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"error: --config {cfg}: ") and message in err, err
    assert main(["build-cube", "--config", str(tmp_path / "missing.toml")]) == 2
    assert "no such file" in capsys.readouterr().err


def test_quiet_verbose_and_log_file(tmp_path: Path, capsys) -> None:
    log = tmp_path / "run.log"
    secret = "sv=2024&sig=notarealsecret0000"
    remember({"sas_token": secret})
    common.apply_shared(command(), ["search", "-v", "--log-file", str(log)])
    logging.getLogger("glacierflow.test").info("using token %s", secret)
    assert "using token" in capsys.readouterr().err  # --verbose: info on stderr
    text = log.read_text()
    assert "using token" in text and secret not in text  # the file is written, credentials redacted
    common.apply_shared(command(), ["search", "--quiet"])
    assert not common.progress_enabled()
    logging.getLogger("glacierflow.test").info("hidden")
    assert "hidden" not in capsys.readouterr().err and "hidden" not in log.read_text()
    common.reset()
    assert logging.getLogger("glacierflow").handlers == []
