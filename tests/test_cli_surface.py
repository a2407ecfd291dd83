"""The whole command-line surface in one table: every command x every shared option
either parses and reaches the library function with the right keyword and value, or is refused as
an unknown option; the old spellings still work one release and say which spelling replaces them;
the README's command table matches ``--help``; one error path (``error: <message>``, no traceback,
exit 1) for the errors raised on purpose; and the stage of the most recent run stands in for an
omitted STAGE. The library functions are replaced by recorders, so the table runs in seconds."""

from __future__ import annotations

import inspect
import json
import os
import re
import time
from pathlib import Path
from typing import Any, Callable

import click
import pytest
from click.testing import CliRunner

from udaqa_pipeline.experiments import demo
from udaqa_pipeline.cli import main
from udaqa_pipeline.errors import UdaqaError
from udaqa_pipeline.resolve import AMBIGUOUS_WITHIN_S, ResolveError, stage_from_runs

README = Path(__file__).resolve().parent.parent / "README.md"

#: The shared options of the convention (README "Commands"; udaqa_pipeline/cli/options.py).
SHARED = ("STAGE", "--root", "--cache", "--cache-root", "--run", "--set", "--progress", "--no-progress", "--device",
          "--json", "--jobs", "--threads")

#: What each shared option is given in the table, and (for a keyword) the value it must arrive as.
GIVEN: dict[str, tuple[list[str], Any]] = {
    "STAGE": (["mtl"], "mtl"),
    "--root": (["--root", "/data/root"], "/data/root"),
    "--cache": (["--cache", "/data/cache/mtl-0123"], "/data/cache/mtl-0123"),
    "--cache-root": (["--cache-root", "/data/cache"], "/data/cache"),
    "--run": (["--run", "/data/runs/x"], "/data/runs/x"),
    "--set": (["--set", "train.epochs=3", "--set", "train.lr=0.5"], ("train.epochs=3", "train.lr=0.5")),
    "--progress": (["--progress"], True),
    "--no-progress": (["--no-progress"], False),
    "--device": (["--device", "cuda:1"], "cuda:1"),
    "--json": (["--json"], None),
    "--jobs": (["--jobs", "3"], 3),
    "--threads": (["--threads", "2"], 2),
}

TEXT = "formatted text"
RESULT = {"protocol": "honest", "rows": [], "value": 1.5}


class Row:
    """One command: how to call it, the library function it reaches (``module:function``), what that
    function returns, the formatters to stub, and for each shared option the parameter of the library
    function it reaches (None: the command refuses the option)."""

    def __init__(self, argv: list[str], target: str, returns: Any, cells: dict[str, str | None], *,
                 stage: list[str] = (), stubs: dict[str, Any] | None = None, printed: Any = None):
        self.argv, self.target, self.returns, self.cells = argv, target, returns, cells
        self.stage, self.stubs = list(stage), stubs or {}
        self.printed = returns if printed is None else printed  # what --json prints
        missing = set(SHARED) - set(cells)
        assert not missing, f"{argv}: say for every shared option what it reaches (or None): {missing}"


def _cells(**reach: str) -> dict[str, str | None]:
    """Shared option -> library parameter; options not named are refused by the command."""
    names = {"stage": "STAGE", "root": "--root", "cache": "--cache", "cache_root": "--cache-root", "run": "--run",
             "set": "--set", "progress": "--progress", "no_progress": "--no-progress", "device": "--device",
             "json": "--json", "jobs": "--jobs", "threads": "--threads"}
    out = {opt: None for opt in SHARED}
    for k, v in reach.items():
        out[names[k]] = v
    return out


def _inspect_cfg(bound: dict) -> Any:
    return bound["cfg"].train.epochs, bound["cfg"].train.lr


ROWS: dict[str, Row] = {
    "weights fetch": Row(["weights", "fetch"], "udaqa_pipeline.backbone.weights:fetch_weights", Path("/w.pt"),
                         _cells(cache_root="cache_root"),
                         stubs={"udaqa_pipeline.backbone.weights:weights_sha256": lambda root=None: "0" * 64}),
    "weights verify": Row(["weights", "verify"], "udaqa_pipeline.backbone.weights:verify_weights", "0" * 64,
                          _cells(cache_root="cache_root")),
    "classify": Row(["classify", "clip.mp4"], "udaqa_pipeline.backbone.classify:classify_video",
                    {"frames": 9, "windows": 1, "logits": [0.0], "top": []},
                    _cells(cache_root="cache_root", json="")),
    "datasets list": Row(["datasets", "list"], "udaqa_pipeline.config:available_stages", [], _cells()),
    "datasets inspect": Row(["datasets", "inspect"], "udaqa_pipeline.datasets:inspect_dataset", RESULT,
                            _cells(stage="name", root="root", set="cfg", json=""), stage=["mtl"],
                            stubs={"udaqa_pipeline.cli.datasets:_human": lambda info: TEXT}),
    "features": Row(["features"], "udaqa_pipeline.cache.extract:extract_features", Path("/data/cache/mtl-0123"),
                    _cells(stage="stage", root="root", cache_root="cache_root", set="cfg",
                           progress="progress", no_progress="progress", device="device", threads="threads"),
                    stage=["mtl"]),
    "cache info": Row(["cache", "info", "{tmp}"], "udaqa_pipeline.cache.verify:cache_info", RESULT,
                      _cells(json="")),
    "cache verify": Row(["cache", "verify", "{tmp}"], "udaqa_pipeline.cache.verify:verify_cache",
                        {"ok": True, "problems": []}, _cells(json="")),
    "cache merge": Row(["cache", "merge", "{tmp}"], "udaqa_pipeline.cache.merge:merge_cache", Path("/c"), _cells(),
                       stubs={"udaqa_pipeline.cache.extract:finish_cache": lambda out, strict: None}),
    "train": Row(["train"], "udaqa_pipeline.engine.run:train", Path("/data/runs/x"),
                 # --root parses (for --finetune-backbone) but training from the cache reads no frames
                 _cells(stage="dataset", root="-", cache="cache", cache_root="cache_root", run="run_dir",
                        set="overrides",
                        progress="progress", no_progress="progress", device="device"), stage=["mtl"]),
    "train --finetune-backbone": Row(
        ["train", "--finetune-backbone"], "udaqa_pipeline.engine.finetune:finetune", Path("/data/runs/x"),
        # --cache and --cache-root parse (train takes them) but fine-tuning reads frames, not a cache
        _cells(stage="dataset", root="root", cache="-", cache_root="-", run="run_dir", set="overrides",
               progress="progress", no_progress="progress", device="device"), stage=["mtl"]),
    # STAGE names the default run directory (resolved by the command), not an input of evaluate
    "evaluate": Row(["evaluate"], "udaqa_pipeline.evaluation.evaluate:evaluate", RESULT,
                    _cells(stage="-", cache="cache", cache_root="cache_root", run="run_dir", json=""),
                    stage=["mtl"], stubs={"udaqa_pipeline.evaluation.report:format_metrics": lambda m: TEXT,
                                          "udaqa_pipeline.evaluation.report:write_report": lambda ev: ev}),
    "ablate": Row(["ablate"], "udaqa_pipeline.experiments.ablate:ablate", RESULT,
                  _cells(stage="dataset", cache="cache", cache_root="cache_root", run="run_dir", set="overrides",
                         json="", jobs="jobs", threads="threads"), stage=["mtl"],
                  stubs={"udaqa_pipeline.experiments.ablate:format_table": lambda r: TEXT}),
    "cv": Row(["cv"], "udaqa_pipeline.experiments.cv:cross_validate", RESULT,
              _cells(stage="stage", root="root", cache="cache", cache_root="cache_root", run="run_dir", set="overrides",
                     progress="progress", no_progress="progress", json="", jobs="jobs"), stage=["mtl"],
              stubs={"udaqa_pipeline.experiments.cv:format_table": lambda r: TEXT}),
    "score": Row(["score", "clip.mp4", "--run", "/base/run"], "udaqa_pipeline.inference.score:score",
                 {"batch": False, "rows": [{"status": "ok"}]},
                 # --run is required here: the base call gives one, the cell's (given last) must win
                 _cells(run="run_dir", device="device", json=""),
                 stubs={"udaqa_pipeline.inference.score:format_row": lambda row: TEXT}, printed={"status": "ok"}),
    "finetune": Row(["finetune"], "udaqa_pipeline.engine.finetune:finetune", Path("/data/runs/x"),
                    _cells(stage="dataset", root="root", run="run_dir", set="overrides", progress="progress",
                           no_progress="progress", device="device", jobs="jobs"), stage=["mtl"]),
    "evaluate-finetuned": Row(["evaluate-finetuned", "--run", "/base/run"],
                              "udaqa_pipeline.evaluation.finetuned:evaluate_finetuned", RESULT,
                              _cells(root="root", run="run_dir", device="device", json="", jobs="jobs"),
                              stubs={"udaqa_pipeline.evaluation.report:format_metrics": lambda m: TEXT}),
    "demo": Row([], "udaqa_pipeline.experiments.demo:run_demo", {}, _cells(cache_root="cache_root", set="overrides",
                                                               progress="progress", no_progress="progress")),
}


def _leaf_commands(group: click.Group, prefix: tuple[str, ...] = ()) -> set[str]:
    out = set()
    for name, cmd in group.commands.items():
        if isinstance(cmd, click.Group):
            out |= _leaf_commands(cmd, (*prefix, name))
        else:
            out.add(" ".join((*prefix, name)))
    return out


def _command(row: Row) -> click.Command | None:
    cmd: Any = main
    for word in row.argv:
        if not isinstance(cmd, click.Group) or word not in cmd.commands:
            break
        cmd = cmd.commands[word]
    return None if cmd is main else cmd


def test_the_table_has_every_command():
    table = {k.split(" --")[0] for k in ROWS}
    assert table == _leaf_commands(main) | {"demo"}


def _resolve(spec: str) -> tuple[Any, str]:
    import importlib

    mod, name = spec.split(":")
    return importlib.import_module(mod), name


class Recorder:
    def __init__(self, real: Callable, returns: Any):
        sig = real.sig if isinstance(real, Recorder) else inspect.signature(real)
        self.sig, self.returns, self.calls = sig, returns, []

    def __call__(self, *args, **kwargs):
        b = self.sig.bind(*args, **kwargs)
        b.apply_defaults()
        self.calls.append(dict(b.arguments))
        return self.returns


def _invoke(row: Row, argv: list[str], monkeypatch, capsys) -> tuple[int, str, str]:
    """Run one command line; ``(exit status, stdout, stderr)``."""
    if row is ROWS["demo"]:
        try:
            code = demo.main(argv)
        except SystemExit as e:  # argparse refuses an unknown option with status 2
            code = e.code
        out = capsys.readouterr()
        return code, out.out, out.err
    r = CliRunner().invoke(main, argv)
    if r.exception is not None and not isinstance(r.exception, SystemExit):
        raise r.exception
    return r.exit_code, r.stdout, r.stderr


@pytest.fixture
def recorder(monkeypatch, tmp_path):
    monkeypatch.setenv("UDAQA_RUNS", str(tmp_path / "runs"))  # an omitted STAGE would have nothing to resolve

    def make(row: Row) -> Recorder:
        mod, name = _resolve(row.target)
        rec = Recorder(getattr(mod, name), row.returns)
        monkeypatch.setattr(mod, name, rec)
        for spec, fn in row.stubs.items():
            m, n = _resolve(spec)
            monkeypatch.setattr(m, n, fn)
        return rec

    return make


def _base(row: Row, tmp_path: Path) -> list[str]:
    return [a.replace("{tmp}", str(tmp_path)) for a in row.argv]


@pytest.mark.parametrize("option", SHARED)
@pytest.mark.parametrize("command", list(ROWS))
def test_every_command_x_every_shared_option(command, option, recorder, tmp_path, monkeypatch, capsys):
    row = ROWS[command]
    rec = recorder(row)
    param = row.cells[option]
    given, value = GIVEN[option]
    if option == "STAGE":
        if param is None:
            params = [] if row is ROWS["demo"] else _command(row).params
            assert not any(p.name == "stage" for p in params), f"{command} takes STAGE: fill its cell"
            return
        argv = _base(row, tmp_path) + given
    else:
        argv = _base(row, tmp_path) + row.stage + given
    code, out, err = _invoke(row, argv, monkeypatch, capsys)
    if param is None:
        assert code == 2 and ("No such option" in err or "unrecognized arguments" in err), (command, option, err)
        assert rec.calls == []
        return
    assert code == 0, (command, option, out, err)
    assert len(rec.calls) == 1
    call = rec.calls[0]
    if param == "-":  # parsed, not passed on: the library function has no such input
        return
    if option == "--json":
        assert json.loads(out) == json.loads(json.dumps(row.printed, default=str))
        return
    if param == "cfg":
        assert _inspect_cfg(call) == (3, 0.5)
    else:
        assert call[param] == value, (command, option, call)


#: Spellings of the previous release, now refused by click as any unknown option or argument:
#: (command line, row).
REMOVED = [
    (["ablate", "--dataset", "mtl"], "ablate"),
    (["score", "clip.mp4", "--run", "/r", "--dataset", "mtl"], "score"),
    (["features", "mtl", "--workers", "3"], "features"),
    (["finetune", "mtl", "--workers", "3"], "finetune"),
    (["evaluate-finetuned", "--run", "/r", "--workers", "3"], "evaluate-finetuned"),
    (["evaluate-finetuned", "/data/runs/ft"], "evaluate-finetuned"),
    (["cv", "mtl", "--out", "/o"], "cv"),
    (["-o", "a.b=1"], "demo"),
    (["--override", "c.d=2"], "demo"),
]


@pytest.mark.parametrize("argv,command", REMOVED)
def test_old_spellings_are_refused(argv, command, recorder, monkeypatch, capsys):
    row = ROWS[command]
    rec = recorder(row)
    code, out, err = _invoke(row, argv, monkeypatch, capsys)
    assert code == 2 and rec.calls == []
    assert "no such option" in err.lower() or "unexpected extra argument" in err.lower() \
        or "unrecognized arguments" in err.lower(), err


def test_library_messages_reach_stderr_as_bare_lines_once(monkeypatch):
    """The library logs; the CLI's one handler shows INFO and up on stderr, however often it runs."""
    import logging

    def verify(cache_root=None):
        logging.getLogger("udaqa_pipeline.backbone.weights").info("installing the weights")
        logging.getLogger("udaqa_pipeline.backbone.weights").debug("not shown")
        return "0" * 64

    monkeypatch.setattr("udaqa_pipeline.backbone.weights.verify_weights", verify)
    for _ in range(2):
        r = CliRunner().invoke(main, ["weights", "verify"])
        assert r.exit_code == 0, r.output
        assert r.stderr.splitlines() == ["installing the weights"] and "installing" not in r.stdout


def test_run_dir_stays_as_the_torchrun_spelling(recorder, monkeypatch, capsys):
    for command in ("train", "finetune"):
        rec = recorder(ROWS[command])
        code, out, err = _invoke(ROWS[command], [command, "mtl", "--run-dir", "/r"], monkeypatch, capsys)
        assert code == 0 and rec.calls[0]["run_dir"] == "/r" and "deprecated" not in err


def test_runs_root_names_the_default_run_directory(recorder, monkeypatch, capsys, tmp_path):
    """``--runs-root DIR`` is where a command's default run directory lives and an omitted STAGE is
    looked up; ``--run`` still wins."""
    want = {"train": tmp_path / "mtl" / "fold1", "finetune": tmp_path / "mtl" / "finetune-fold1",
            "evaluate": tmp_path / "mtl" / "fold1", "ablate": tmp_path / "mtl" / "ablate-fold1",
            "cv": tmp_path / "mtl" / "cv-official"}
    for command, path in want.items():
        rec = recorder(ROWS[command])
        fold = [] if command == "cv" else ["--fold", "1"]
        code, out, err = _invoke(ROWS[command], [command, "mtl", *fold, "--runs-root", str(tmp_path)], monkeypatch,
                                 capsys)
        assert code == 0, (command, err)
        got = rec.calls[0]["run_dir"]
        assert Path(got) == path, (command, got)
    rec = recorder(ROWS["train"])
    _invoke(ROWS["train"], ["train", "mtl", "--runs-root", str(tmp_path), "--run", "/r"], monkeypatch, capsys)
    assert rec.calls[0]["run_dir"] == "/r"


def test_usage_errors_are_one_line(capsys):
    for argv in (["cv", "demo", "--out", "x"], ["train", "--split", "bogus"]):
        r = CliRunner().invoke(main, argv)
        assert r.exit_code == 2
        lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
        assert len(lines) == 1 and lines[0].startswith("error: ") and "--help" in lines[0], r.stderr


def test_max_epoch_minutes_reaches_fine_tuning(recorder, monkeypatch, capsys):
    for argv in (["train", "mtl", "--finetune-backbone"], ["finetune", "mtl"]):
        rec = recorder(ROWS["finetune"])
        code, out, err = _invoke(ROWS["finetune"], [*argv, "--max-epoch-minutes", "7.5", "--force"],
                                 monkeypatch, capsys)
        assert code == 0, err
        assert rec.calls[0]["max_epoch_minutes"] == 7.5 and rec.calls[0]["force"] is True


# ---------------------------------------------------------------------------------- README vs --help

def _readme_table() -> list[str]:
    """The command lines of the README's "Commands" table, one per row."""
    text = README.read_text()
    section = text[text.index("\n## Commands"):]
    section = section[:section.index("\n## ", 1)]
    rows = [m.group(1).replace("\\|", "|") for m in re.finditer(r"^\| `((?:udaqa-pipeline|python -m) [^`]*)`",
                                                               section, re.M)]
    assert rows, "the README's Commands table is gone"
    return rows


def _readme_bash() -> list[str]:
    """The ``udaqa-pipeline`` command lines of the README's bash blocks (comments cut off)."""
    lines = []
    for block in re.findall(r"```bash\n(.*?)```", README.read_text(), re.S):
        lines += [c for c in (ln.split("#")[0].strip() for ln in block.splitlines()) if "udaqa-pipeline " in c]
    return lines


def _help_options(words: list[str]) -> set[str]:
    if words == ["demo"]:
        text = demo.parser().format_help()
    else:
        r = CliRunner().invoke(main, [*words, "--help"])
        assert r.exit_code == 0, (words, r.output)
        text = r.output
    return set(re.findall(r"(?<![\w-])--[a-z][a-z0-9-]*", text))


def _split(line: str) -> tuple[list[str], list[str]]:
    """(command words, options) of a README command line."""
    if "udaqa_pipeline.experiments.demo" in line:
        words, rest = ["demo"], line.split("udaqa_pipeline.experiments.demo", 1)[1]
    else:
        rest = re.split(r"udaqa-pipeline |-m udaqa_pipeline ", line, maxsplit=1)[1]
        words, cmd = [], main
        for tok in rest.split():
            if isinstance(cmd, click.Group) and tok in cmd.commands:
                words.append(tok)
                cmd = cmd.commands[tok]
            else:
                break
        assert words and not isinstance(cmd, click.Group), f"README names no command in: {line}"
    return words, re.findall(r"(?<![\w-])--[a-z][a-z0-9-]*", rest)


def test_readme_command_table_matches_help():
    for line in _readme_table() + _readme_bash():
        words, options = _split(line)
        unknown = set(options) - _help_options(words)
        assert not unknown, f"README: `{line}` spells {sorted(unknown)}, which `{' '.join(words)} --help` lacks"
    listed = [" ".join(_split(line)[0]) for line in _readme_table()]
    assert sorted(listed) == sorted(_leaf_commands(main) | {"demo"}), "one row per command in the README's table"


# ---------------------------------------------------------------------------------- one error path

def test_errors_raised_on_purpose_share_one_base():
    from udaqa_pipeline.backbone.weights import WeightsError
    from udaqa_pipeline.cache import CacheError
    from udaqa_pipeline.cache.extract import ExtractionError
    from udaqa_pipeline.cache.lock import CacheLockedError
    from udaqa_pipeline.config import ConfigError
    from udaqa_pipeline.datasets.common import AnnotationError
    from udaqa_pipeline.engine.finetune import FinetuneError
    from udaqa_pipeline.safe_pickle import UnsafePickleError
    from udaqa_pipeline.inference.score import ScoreError
    from udaqa_pipeline.runs.checkpoint import CheckpointError
    from udaqa_pipeline.engine.fit import TrainingError
    from udaqa_pipeline.video.clips import ShortVideoError
    from udaqa_pipeline.video.decode import VideoError

    for cls in (VideoError, ShortVideoError, AnnotationError, ConfigError, CacheError, ExtractionError,
                CacheLockedError, CheckpointError, TrainingError, WeightsError, FinetuneError, ScoreError,
                UnsafePickleError, ResolveError):
        assert issubclass(cls, UdaqaError), cls
    # callers that catch the builtin classes still catch them
    assert issubclass(ConfigError, ValueError) and issubclass(AnnotationError, ValueError)
    assert issubclass(CheckpointError, RuntimeError) and issubclass(CacheError, RuntimeError)


def _one_line_error(r) -> str:
    assert r.exit_code == 1, r.output
    assert "Traceback" not in r.output and r.stdout == ""
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), r.stderr
    return lines[0]


SMALL = ["train.batch_size=8", "train.lr=1e-3", "train.wa_hidden=32", "train.video_channels=[4,8,8,8]",
         "train.eval_samples=2", "train.epochs=1"]


@pytest.fixture(scope="module")
def toy_run(tmp_path_factory):
    """(toy cache, a one-epoch run trained on it)."""
    from udaqa_pipeline.testing import write_toy_cache
    from udaqa_pipeline.engine.run import train

    base = tmp_path_factory.mktemp("surface")
    cache = write_toy_cache(base / "toy", n=16)
    return cache, train("mtl", cache=cache, run_dir=base / "run", overrides=SMALL, progress=False)


def test_score_a_broken_video_prints_one_line(toy_run, tmp_path):
    _, run = toy_run
    broken = tmp_path / "broken.mp4"
    broken.write_bytes(bytes(range(256)) * 12)
    line = _one_line_error(CliRunner().invoke(main, ["score", str(broken), "--run", str(run), "--difficulty", "3"]))
    assert str(broken) in line and "ffprobe" in line  # the file and the fix


def test_finetune_without_weights_prints_one_line(tmp_path, monkeypatch):
    from udaqa_pipeline.synth import SynthConfig, generate

    root = tmp_path / "data"
    generate(root, SynthConfig(n_dives=4, n_frames=16, width=96, height=72, dives_per_video=2, test_fraction=0.5),
             workers=1)
    monkeypatch.setenv("UDAQA_CACHE", str(tmp_path / "no-weights"))
    r = CliRunner().invoke(main, ["train", "mtl", "--finetune-backbone", "--root", str(root), "--run",
                                  str(tmp_path / "ft"), "--device", "cpu", "--no-progress"])
    line = _one_line_error(r)
    assert str(tmp_path / "no-weights" / "weights") in line and "udaqa-pipeline weights fetch" in line


def test_a_bug_keeps_its_traceback(monkeypatch):
    import importlib

    def bug(*a, **k):
        raise KeyError("a bug, not a user error")

    monkeypatch.setattr(importlib.import_module("udaqa_pipeline.engine.run"), "train", bug)
    r = CliRunner().invoke(main, ["train", "mtl"])
    assert isinstance(r.exception, KeyError) and "error:" not in r.output  # click re-raises: python prints it


def test_features_prints_the_cache_path_after_an_extraction_error(monkeypatch):
    import udaqa_pipeline.cache.extract as ex

    def fail(*a, **k):
        raise ex.ExtractionError("0 of 2 samples ok; fix the videos and rerun", Path("/c/mtl-0123"), {"corrupt": 2})

    monkeypatch.setattr(ex, "extract_features", fail)
    r = CliRunner().invoke(main, ["features", "mtl"])
    assert r.exit_code == 1 and r.stdout == "/c/mtl-0123\n"
    assert r.stderr == "error: 0 of 2 samples ok; fix the videos and rerun\n"


# ---------------------------------------------------------------------------------- an omitted STAGE

def _runs(root: Path, ages: dict[str, float]) -> None:
    """A checkpoint per ``stage/fold0`` whose modification time is ``age`` seconds ago."""
    now = time.time()
    for stage, age in ages.items():
        ck = root / stage / "fold0" / "checkpoint.pt"
        ck.parent.mkdir(parents=True)
        ck.write_bytes(b"")
        os.utime(ck, (now - age, now - age))


def test_stage_from_runs(tmp_path):
    assert stage_from_runs.__module__ == "udaqa_pipeline.resolve"
    from udaqa_pipeline import resolve
    from udaqa_pipeline.runs import checkpoint

    assert resolve.CHECKPOINT == checkpoint.CHECKPOINT
    with pytest.raises(ResolveError, match="no run under"):
        stage_from_runs(tmp_path / "none")
    _runs(tmp_path / "a", {"mtl": 500, "jigsaws": 500 - AMBIGUOUS_WITHIN_S - 1, "aqa7": 5000})
    assert stage_from_runs(tmp_path / "a") == "jigsaws"
    (tmp_path / "a" / "mtl" / "ablate-fold0" / "row").mkdir(parents=True)
    (tmp_path / "a" / "mtl" / "ablate-fold0" / "row" / "checkpoint.pt").write_bytes(b"")  # newest, deeper
    assert stage_from_runs(tmp_path / "a") == "mtl"
    _runs(tmp_path / "b", {"mtl": 100, "jigsaws": 100 + AMBIGUOUS_WITHIN_S - 1, "aqa7": 5000})
    with pytest.raises(ResolveError) as e:
        stage_from_runs(tmp_path / "b")
    msg = str(e.value)
    assert "2 stages" in msg and "(mtl, jigsaws)" in msg and "aqa7" in msg
    assert str(tmp_path / "b" / "mtl" / "fold0") in msg


def test_the_mission_commands_without_a_stage(toy_run, tmp_path, monkeypatch):
    """`make train` then `udaqa-pipeline evaluate --fold 2` with no stage: the stage of the most recent
    run is used and said on stderr; on a single-split dataset fold 2 is refused, in one line."""
    cache, _ = toy_run
    monkeypatch.setenv("UDAQA_RUNS", str(tmp_path / "runs"))
    sets = sum((["--set", s] for s in SMALL), [])
    cli = CliRunner()
    assert _one_line_error(cli.invoke(main, ["evaluate", "--cache", str(cache)])).startswith("error: no stage given")
    r = cli.invoke(main, ["train", "mtl", "--cache", str(cache), "--no-progress", *sets])
    assert r.exit_code == 0, r.output
    r = cli.invoke(main, ["evaluate", "--cache", str(cache), "--samples", "2", "--json"])
    assert r.exit_code == 0, r.output
    assert r.stderr.startswith(f"stage mtl: the most recent run under {tmp_path / 'runs'}")
    assert json.loads(r.stdout)["overall"]["n"] == 4
    r = cli.invoke(main, ["train", "--fold", "2", "--cache", str(cache), "--no-progress", *sets])
    assert r.exit_code == 1 and "Traceback" not in r.output
    assert "error: fold 2 does not exist (single-split dataset: only fold 0)" in r.stderr
    r = cli.invoke(main, ["evaluate", "--fold", "2", "--cache", str(cache)])
    assert r.exit_code == 1 and "Traceback" not in r.output
    assert r.stderr.splitlines()[-1].startswith(f"error: no checkpoint at {tmp_path / 'runs' / 'mtl' / 'fold2'}")
