"""experiments/reproduce.py: input checks, the plan, dry runs and resumable execution."""

import importlib
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "experiments"))
import reproduce  # noqa: E402


def make_dataset(root, classes=("cat", "dog"), splits=("train", "test")):
    for split in splits:
        for c in classes:
            (root / split / c).mkdir(parents=True)
            Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(root / split / c / "a.png")
    return root


@pytest.fixture
def inputs(tmp_path):
    weights = tmp_path / "vgg19.h5"
    h5py.File(weights, "w").close()  # the dry run only checks the HDF5 signature
    return make_dataset(tmp_path / "data"), weights, tmp_path / "run"


def args(data, weights, out, *extra, dataset="asirra"):
    return ["--dataset", dataset, "--data", str(data), "--imagenet", str(weights), "--out", str(out), *extra]


def forbid_subprocesses(monkeypatch):
    def fail(*a, **k):
        raise AssertionError(f"dry run started a process: {a}")
    monkeypatch.setattr(subprocess, "run", fail)
    monkeypatch.setattr(subprocess, "Popen", fail)


def test_dry_run_prints_the_plan_and_computes_nothing(inputs, monkeypatch, capsys):
    data, weights, out = inputs
    forbid_subprocesses(monkeypatch)
    assert reproduce.main(args(data, weights, out, "--dry-run", "--seed", "3")) == 0
    printed = capsys.readouterr().out
    assert not out.exists()
    lines = [line for line in printed.splitlines() if not line.startswith("#")]
    scripts = ["train.py"] + [f"{s.name}.py" for s in reproduce.STEPS]
    assert len(lines) == len(scripts)
    for line, script in zip(lines, scripts):
        assert f"experiments/{script}" in line and "--seed 3" in line and f"--data {data}" in line
    assert f"--init imagenet:{weights}" in lines[0] and f"--out {out / 'checkpoint'}" in lines[0]
    assert "--image-size 224" in lines[0] and "--arch vgg19" in lines[0]
    for line, step in zip(lines[1:], reproduce.STEPS):
        assert f"--checkpoint {out / 'checkpoint'}" in line and f"--out {out / step.name}" in line
        assert ("--runs 5" in line) == step.runs
        assert ("--refs-per-class 2500" in line) == step.refs
        assert ("--unseen 1000" in line) == step.unseen


@pytest.mark.parametrize("dataset", sorted(reproduce.RECIPES))
def test_plan_follows_the_recipe(dataset, tmp_path):
    r = reproduce.RECIPES[dataset]
    commands = reproduce.plan(dataset, "D", "W.pth", tmp_path, seed=1)
    assert [c.name for c in commands] == ["train"] + [s.name for s in reproduce.STEPS]
    train = commands[0].argv
    for flag, value in [("--epochs", r.epochs), ("--lr", r.lr), ("--batch-size", r.batch_size),
                        ("--weight-decay", r.weight_decay), ("--optimizer", r.optimizer)]:
        assert train[train.index(flag) + 1] == str(value)
    for c in commands[1:]:
        argv = list(c.argv)
        if "--refs-per-class" in argv:
            assert argv[argv.index("--refs-per-class") + 1] == str(r.refs_per_class)
    assert (reproduce.RECIPES["food"].refs_per_class, reproduce.RECIPES["asirra"].refs_per_class) == (0, 2500)


def test_tfds_spec_is_only_checked_for_form(inputs, monkeypatch, capsys):
    _, weights, out = inputs
    forbid_subprocesses(monkeypatch)
    assert reproduce.main(args("tfds:cats_vs_dogs:4.0.1", weights, out, "--dry-run")) == 0
    assert "--data tfds:cats_vs_dogs:4.0.1" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        reproduce.main(args("tfds:Cats vs Dogs", weights, out, "--dry-run"))
    assert "--data" in capsys.readouterr().err


@pytest.mark.parametrize("breakage,flag,words", [
    ("missing_weights", "--imagenet", "does not exist"),
    ("weights_extension", "--imagenet", "extension"),
    ("weights_not_hdf5", "--imagenet", "signature"),
    ("missing_split", "--data", "'test'"),
    ("one_class", "--data", "at least 2 class folders"),
    ("classes_differ", "--data", "differ"),
    ("empty_class", "--data", "no images"),
    ("wrong_class_count", "--data", "the dataset has 4"),
    ("out_not_empty", "--out", "not empty"),
])
def test_bad_inputs_name_the_argument(inputs, monkeypatch, capsys, breakage, flag, words):
    data, weights, out = inputs
    dataset = "asirra"
    if breakage == "missing_weights":
        weights = weights.with_name("absent.pth")
    elif breakage == "weights_extension":
        weights = weights.rename(weights.with_suffix(".npz"))
    elif breakage == "weights_not_hdf5":
        weights.write_text("not an hdf5 file")
    elif breakage == "missing_split":
        (data / "test" / "cat" / "a.png").unlink()
        (data / "test" / "cat").rmdir()
        (data / "test" / "dog" / "a.png").unlink()
        (data / "test" / "dog").rmdir()
        (data / "test").rmdir()
    elif breakage == "one_class":
        data = make_dataset(data.with_name("one"), classes=("cat",))
    elif breakage == "classes_differ":
        (data / "test" / "dog").rename(data / "test" / "puppy")
    elif breakage == "empty_class":
        (data / "train" / "dog" / "a.png").unlink()
    elif breakage == "wrong_class_count":
        dataset = "ro"
    elif breakage == "out_not_empty":
        out.mkdir()
        (out / "something").write_text("")
    forbid_subprocesses(monkeypatch)
    with pytest.raises(SystemExit) as exc:
        reproduce.main(args(data, weights, out, "--dry-run", dataset=dataset))
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert f"error: {flag}:" in err and words in err


def test_resume_allows_a_non_empty_out(inputs, monkeypatch):
    data, weights, out = inputs
    out.mkdir()
    (out / "train.done").write_text("")
    forbid_subprocesses(monkeypatch)
    assert reproduce.main(args(data, weights, out, "--dry-run", "--resume")) == 0


class FakeRun:
    """Stands in for subprocess.run: records argv, fails on a chosen step."""

    def __init__(self, fail_on=None):
        self.calls, self.fail_on = [], fail_on

    def __call__(self, argv):
        self.calls.append(argv)
        status = 1 if self.fail_on and argv[1].endswith(f"/{self.fail_on}.py") else 0
        return subprocess.CompletedProcess(argv, status)


def fake_scripts(tmp_path, commands):
    """The same plan pointed at empty stand-in scripts (the real ones may not exist yet)."""
    scripts = tmp_path / "scripts"
    scripts.mkdir(exist_ok=True)
    out = []
    for c in commands:
        script = scripts / Path(c.argv[1]).name
        script.write_text("")
        out.append(c._replace(argv=(c.argv[0], str(script), *c.argv[2:])))
    return out


def test_execute_runs_in_order_stops_on_failure_and_resumes(tmp_path):
    out = tmp_path / "run"
    commands = fake_scripts(tmp_path, reproduce.plan("gc", "D", "W.pth", out, seed=0))
    names = [c.name for c in commands]

    failing = FakeRun(fail_on="table2")
    with pytest.raises(RuntimeError, match="table2.*status 1"):
        reproduce.execute(commands, out, resume=False, run=failing)
    assert [Path(a[1]).stem for a in failing.calls] == names[:names.index("table2") + 1]
    assert sorted(p.name for p in out.glob("*.done")) == sorted(f"{n}.done" for n in names[:2])

    (out / "table2").mkdir()
    (out / "table2" / "features.npz").write_text("")  # what the interrupted step left behind
    resumed = FakeRun()
    assert reproduce.execute(commands, out, resume=True, run=resumed) == names[2:]
    expected = [list(c.argv) + (["--resume"] if c.name == "table2" else []) for c in commands[2:]]
    assert [list(a) for a in resumed.calls] == expected
    assert reproduce.execute(commands, out, resume=True, run=FakeRun()) == []

    other = fake_scripts(tmp_path, reproduce.plan("gc", "D", "W.pth", out, seed=1))
    with pytest.raises(ValueError, match="--resume"):
        reproduce.execute(other, out, resume=True, run=FakeRun())


def test_execute_refuses_missing_scripts(tmp_path):
    commands = reproduce.plan("food", "D", "W.pth", tmp_path / "run", seed=0)
    missing = [c._replace(argv=(c.argv[0], str(tmp_path / "nope.py"), *c.argv[2:])) for c in commands]
    run = FakeRun()
    with pytest.raises(ValueError, match="nope.py"):
        reproduce.execute(missing, tmp_path / "run", resume=False, run=run)
    assert run.calls == [] and not (tmp_path / "run").exists()


def test_docs_cover_every_dataset():
    doc = (REPO / "docs" / "reproduction.md").read_text()
    for name, r in reproduce.RECIPES.items():
        assert f"--dataset {name}" in doc
        assert f"--epochs {r.epochs}" in doc


@pytest.mark.parametrize("resume", [False, True])
def test_every_planned_command_parses_with_its_script(tmp_path, resume):
    """The plan's flags must be ones the experiment scripts accept (checked by their own parsers)."""
    for c in reproduce.plan("ro", "tfds:x", str(tmp_path / "w.pth"), tmp_path / "run", seed=2):
        if not Path(c.argv[1]).is_file():
            pytest.skip(f"{c.argv[1]} not written yet")
        script = importlib.import_module(Path(c.argv[1]).stem)
        parsed = vars(script.parse_args(list(c.argv[2:]) + (["--resume"] if resume else [])))
        assert parsed["seed"] == 2 and parsed["resume"] == resume
        if "--refs-per-class" in c.argv:
            assert parsed["refs_per_class"] == reproduce.RECIPES["ro"].refs_per_class
