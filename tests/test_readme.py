"""The README's commands and API cell hold as written: every command and flag exists, every API call binds.

The README's examples talk to Planetary Computer, which these machines cannot reach (the one thing faked here:
nothing is run against the internet). What can be checked offline is checked: each ``glacierflow ...`` line of the
README's shell blocks names a real command and only flags that command has (click's own parser, with the
values as written), and each ``gf.NAME(...)`` call of the Python block exists, binds to its signature, and uses
only keyword options the stage's specs know. The same calls run for real on the twin in tests/test_api.py and
the walkthrough notebook (tests/test_examples.py).
"""

from __future__ import annotations

import ast
import re
import shlex
from pathlib import Path

import pytest

import glacierflow as gf
from glacierflow.api import _split  # the API's own option check (unknown names are one error line)
from glacierflow.cli.common import split_shared
from glacierflow.cli.main import command
from glacierflow.specs import CubeSpec, FlowSpec, ModelSpec, PatchSpec, PredictSpec, PreprocessSpec, TrainSpec

README = (Path(__file__).resolve().parents[1] / "README.md").read_text()


def _shell_lines() -> list[str]:
    lines = []
    for block in re.findall(r"```bash\n(.*?)```", README, re.S):
        for line in block.replace("\\\n", " ").splitlines():
            line = line.split("  #")[0].strip()
            if line.startswith("glacierflow "):
                lines.append(line)
    return lines


@pytest.mark.parametrize("line", _shell_lines())
def test_readme_command_lines_parse(line: str) -> None:
    argv, _ = split_shared(shlex.split(line)[1:])
    cmd, path = command(), []
    while hasattr(cmd, "commands") and argv and argv[0] in cmd.commands:
        path.append(argv[0])
        cmd = cmd.commands[argv.pop(0)]
    assert not hasattr(cmd, "commands"), f"{line}: not a command"
    ctx = cmd.make_context(" ".join(["glacierflow", *path]), list(argv), resilient_parsing=True)
    assert not ctx.args, f"{line}: unexpected arguments {ctx.args}"
    known = {o for p in cmd.params for o in (*getattr(p, "opts", ()), *getattr(p, "secondary_opts", ()))}
    for flag in (a.split("=")[0] for a in argv if a.startswith("--")):
        assert flag in known, f"{line}: {flag} is not an option of glacierflow {' '.join(path)}"


SPECS = {"search": (CubeSpec,), "build_cube": (CubeSpec, PreprocessSpec), "velocity": (FlowSpec,),
         "train": (ModelSpec, PatchSpec, TrainSpec), "predict": (PredictSpec,)}


def test_readme_api_cell_calls_bind_and_use_known_options() -> None:
    import inspect

    block = next(b for b in re.findall(r"```python\n(.*?)```", README, re.S) if "import glacierflow as gf" in b)
    calls = [n for n in ast.walk(ast.parse(block)) if isinstance(n, ast.Call) and isinstance(n.func, ast.Attribute)
             and isinstance(n.func.value, ast.Name) and n.func.value.id == "gf"]
    assert {c.func.attr for c in calls} >= {"build_cube", "write", "open_cube", "velocity", "train", "predict"}
    for call in calls:
        fn = getattr(gf, call.func.attr)
        sig = inspect.signature(inspect.unwrap(fn))
        sig.bind(*[None] * len(call.args), **{k.arg: None for k in call.keywords})
        named = {p for p in sig.parameters if sig.parameters[p].kind is not inspect.Parameter.VAR_KEYWORD}
        extra = {k.arg: None for k in call.keywords if k.arg not in named}
        if extra:
            _split(extra, *SPECS[call.func.attr])  # raises, naming the option, when no spec knows it
