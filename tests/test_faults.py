"""Faults and hostile input, round three (issue #35): interrupted and concurrent runs, full
disks, hostile names, limits, multi-process launches, API misuse, per-input edge cases.

Tiny data in tmp_path. Tests that need root (a tmpfs) or a second process skip with the
reason when the machine cannot run them."""

import errno
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
import warnings
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from ri_jax import distributed, files, plots
from ri_jax.checkpoint import save_checkpoint, write_json
from ri_jax.cli import run_script
from ri_jax.data import decode_image, max_image_pixels
from ri_jax.errors import RIInputError
from ri_jax.html_report import Report, ReportImage, ReportInput, write_report
from ri_jax.interpreter import RepresentativeInterpreter

sys.path.insert(0, str(Path(__file__).parents[1] / "experiments"))

import common  # noqa: E402
from conftest import balanced  # noqa: E402
import interpret  # noqa: E402

REPO = Path(__file__).parents[1]


def _run(main, argv, capsys):
    """Exit status and stderr of a script run the way its ``__main__`` runs it."""
    with pytest.raises(SystemExit) as exc:
        run_script(main, argv, prog="script.py")
    return exc.value.code, capsys.readouterr().err


def _grid(path):
    return plots.image_grid([[plots.Cell(np.zeros((8, 8, 3)), None, "x")]], path=path)


def _report(name: str = "x.png") -> Report:
    image = ReportImage(np.zeros((8, 8, 3)), name, heatmaps={"RI": np.zeros((8, 8))})
    return Report("t", "i", ("RI",), [ReportInput(image, "a", 0.9, "a", "d", [])])


# Every kind of file a run writes, each through the one atomic helper.
WRITERS = {
    "png": lambda p: _grid(p / "fig.png"),
    "html": lambda p: write_report(p, _report(), overwrite=True),
    "csv": lambda p: common.write_csv(p / "s.csv", [{"a": 1}]),
    "md": lambda p: files.atomic_write_text(p / "s.md", "# x\n"),
    "json": lambda p: write_json(p / "s.json", {"a": 1}),
}


# --------------------------------------------------------- whole or not at all


@pytest.mark.parametrize("kind", sorted(WRITERS))
def test_a_write_killed_before_its_rename_leaves_no_partial_file(tmp_path, monkeypatch, kind):
    def killed(src, dst):
        raise KeyboardInterrupt  # a signal arriving once the bytes are out, before the rename

    monkeypatch.setattr(files.os, "replace", killed)
    with pytest.raises(KeyboardInterrupt):
        WRITERS[kind](tmp_path)
    assert list(tmp_path.iterdir()) == []  # neither the file nor its temporary
    monkeypatch.undo()
    WRITERS[kind](tmp_path)
    assert [p.name[0] for p in tmp_path.iterdir()] != ["."]  # written normally otherwise


def test_an_interrupted_figure_keeps_the_previous_png(tmp_path, monkeypatch):
    _grid(tmp_path / "fig.png")
    before = (tmp_path / "fig.png").read_bytes()

    def half_then_sigterm(self, fname, **kwargs):
        Path(fname).write_bytes(before[:100])
        raise KeyboardInterrupt

    monkeypatch.setattr("matplotlib.figure.Figure.savefig", half_then_sigterm)
    with pytest.raises(KeyboardInterrupt):
        _grid(tmp_path / "fig.png")
    assert (tmp_path / "fig.png").read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["fig.png"]


def test_temporaries_of_killed_writers_are_removed_on_the_next_run(tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", ""])
    dead.wait()
    stale = files.temp_path(tmp_path / "input_3.png").with_name(f".input_3.{dead.pid}.tmp.png")
    stale.write_bytes(b"partial")
    mine = files.temp_path(tmp_path / "x.json")  # this (live) process's: kept
    mine.write_bytes(b"{")
    assert files.remove_stale_temps(tmp_path) == [stale]
    assert mine.exists() and not stale.exists()


# --------------------------------------------------------------- full disks


def test_disk_full_names_the_file_leaves_nothing_and_exits_2(tmp_path, monkeypatch, capsys):
    real_open = open

    def tiny_disk(file, mode="r", *args, **kwargs):
        f = real_open(file, mode, *args, **kwargs)
        if "w" in mode and files.TEMP_MARK in str(file):
            def write(data):
                real_write(data[:10])
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            real_write, f.write = f.write, write
        return f

    monkeypatch.setattr("builtins.open", tiny_disk)
    code, err = _run(lambda argv: WRITERS["html"](tmp_path), [], capsys)
    assert code == 2 and "Traceback" not in err
    assert err.startswith(f"script.py: error: {tmp_path / 'index.html'}: No space left on device")
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(OSError) as e:
        files.atomic_write_bytes(tmp_path / "big.bin", b"x" * 100)
    assert e.value.errno == errno.ENOSPC and e.value.filename == str(tmp_path / "big.bin")


def test_a_real_full_tmpfs_and_a_file_size_limit(tmp_path):
    mount = tmp_path / "small"
    mount.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root")
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mount)],
                      capture_output=True).returncode != 0:
        pytest.skip("cannot mount a tmpfs here (no CAP_SYS_ADMIN in this container)")
    try:
        (mount / "index.html").write_text("old page")
        with pytest.raises(OSError) as e:
            files.atomic_write_text(mount / "index.html", "x" * 200_000)
        assert e.value.errno == errno.ENOSPC and e.value.filename == str(mount / "index.html")
        assert [p.name for p in mount.iterdir()] == ["index.html"]
        assert (mount / "index.html").read_text() == "old page"
    finally:
        subprocess.run(["umount", str(mount)], check=False)
    # EFBIG: a file-size limit, in a process of its own (the limit is process-wide).
    code = textwrap.dedent(f"""
        import resource, signal
        from pathlib import Path
        from ri_jax.files import atomic_write_bytes
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (1000, 1000))
        atomic_write_bytes(Path({str(tmp_path / 'big.csv')!r}), b"x" * 5000)
    """)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          cwd=REPO, timeout=120)
    assert proc.returncode != 0 and "File too large" in proc.stderr
    assert str(tmp_path / "big.csv") in proc.stderr
    assert not any(p.name.endswith(".csv") for p in tmp_path.iterdir())


# -------------------------------------------------------------------- signals


@pytest.mark.parametrize("sig,status", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_sigint_and_sigterm_exit_cleanly_with_one_line(tmp_path, capsys, sig, status):
    def busy(argv):
        os.kill(os.getpid(), sig)
        time.sleep(5)  # the signal interrupts this at once

    before = signal.getsignal(signal.SIGTERM)
    code, err = _run(busy, ["--out", str(tmp_path / "o"), "--seed", "1"], capsys)
    assert code == status and "Traceback" not in err and err.count("\n") == 1
    assert err.startswith(f"script.py: interrupted by {sig.name} writing {tmp_path / 'o'}")
    assert "--resume" in err
    assert signal.getsignal(signal.SIGTERM) is before  # the handler is put back


# ------------------------------------------------------------------------ lock


def _hold_lock(folder: Path) -> subprocess.Popen:
    """Another process holding ``folder``'s lock (plain Python: starts in milliseconds)."""
    code = textwrap.dedent(f"""
        import fcntl, os, sys
        fd = os.open({str(folder / files.LOCK_NAME)!r}, os.O_RDWR | os.O_CREAT)
        fcntl.flock(fd, fcntl.LOCK_EX)
        os.write(fd, f"{{os.getpid()}} host".encode())
        print("locked", flush=True)
        sys.stdin.read()
    """)
    proc = subprocess.Popen([sys.executable, "-S", "-c", code], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "locked"
    return proc


def test_a_second_run_on_the_same_out_is_refused_naming_the_lock(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    holder = _hold_lock(out)
    try:
        for resume in (False, True):
            with pytest.raises(RIInputError) as e:
                common.prepare_output(out, resume)
            msg = str(e.value)
            assert msg.startswith(f"--out: {out.resolve()} is in use by another run")
            assert f"process {holder.pid}" in msg and str(out.resolve() / files.LOCK_NAME) in msg
    finally:
        holder.communicate("")
    # The holder is gone: the lock is free again (the kernel released it).
    assert common.prepare_output(out, True) == out
    assert (out / files.LOCK_NAME).read_text().split()[0] == str(os.getpid())
    files._HELD[out.resolve()].release()
    assert not (out / files.LOCK_NAME).exists()


def test_train_takes_the_lock_too(tmp_path, capsys):
    import train
    holder = _hold_lock(tmp_path)
    try:
        code, err = _run(train.main, ["--out", str(tmp_path), "--resume", "--epochs", "1"],
                         capsys)
    finally:
        holder.communicate("")
    assert code == 2 and "is in use by another run" in err and files.LOCK_NAME in err


def test_a_lock_left_by_a_dead_process_is_taken_over(tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", ""])
    dead.wait()
    (tmp_path / files.LOCK_NAME).write_text(f"{dead.pid} {socket.gethostname()}\n")
    lock = files.OutputLock.acquire(tmp_path)
    try:
        assert (tmp_path / files.LOCK_NAME).read_text().split()[0] == str(os.getpid())
        assert files.OutputLock.acquire(tmp_path) is lock  # re-entrant in one process
    finally:
        lock.release()


def test_a_new_out_holding_only_the_lock_is_still_empty(tmp_path):
    out = tmp_path / "new"
    assert common.prepare_output(out, False) == out
    files._HELD[out.resolve()].release()
    (out / "summary.json").write_text("{}")
    with pytest.raises(RIInputError, match="is not empty"):
        common.prepare_output(out, False)
    assert not (out / files.LOCK_NAME).exists()  # a refused run lets the lock go


# ------------------------------------ names, resume, end to end on hostile names

HOSTILE = ["a$x$.png", "pipe|name.png", "new\nline.png", os.fsdecode(b"caf\xff.png")]


@pytest.fixture(scope="module")
def hostile_setup(tmp_path_factory, tiny_model, tiny_config):
    """Train 4 PNGs per class; test images named with $, |, a newline, a non-UTF-8 byte, in
    a data folder whose own name is not UTF-8 (as a C locale decodes a Unicode path)."""
    root = tmp_path_factory.mktemp("hostile")
    data = root / os.fsdecode(b"donn\xe9es")
    rng = np.random.default_rng(0)
    train = []
    for split, names in (("train", [f"{i}.png" for i in range(4)]), ("test", HOSTILE)):
        for c, cls in enumerate(("a", "b")):
            (data / split / cls).mkdir(parents=True)
            for name in names:
                img = (rng.random((32, 32, 3)) * (0.5 + 0.5 * c) * 255).astype(np.uint8)
                Image.fromarray(img).save(data / split / cls / name, format="PNG")
                train += [img / 255.0] if split == "train" else []
    fns, params = tiny_model  # shifted so that the references get both classes
    save_checkpoint(root / "ckpt", balanced(fns, params, np.asarray(train, np.float32)),
                    tiny_config)
    return root, ["--data", str(data), "--checkpoint", str(root / "ckpt"),
                  "--batch-size", "8", "--no-progress", "--num-boundaries", "3", "--top-k", "2",
                  "--ri-variant", "paper"]


def test_hostile_names_and_a_resume_that_removes_stale_files(hostile_setup, capsys):
    root, base = hostile_setup
    out = root / "out"
    first = interpret.main(base + ["--out", str(out), "--inputs", "0,1,2,3", "--html"])
    names = [Path(r["file"]).name for r in first["inputs"]]
    assert sorted(names) == sorted(HOSTILE)  # the test split of class "a": every hostile name
    md = (out / "summary.md").read_text(encoding="utf-8", errors="surrogateescape")
    rows = [line for line in md.splitlines() if line.startswith("| ") and "test index" not in line]
    assert len(rows) == 4 and all(r.count(" | ") == 7 for r in rows)  # one row each, 8 cells
    assert "pipe\\|name.png" in md and "new\\nline.png" in md and "caf\\\\xff.png" in md
    assert "a$x$.png" in md
    for name in ("input_0.png", "input_1.png", "input_2.png", "input_3.png", "index.html"):
        assert (out / name).stat().st_size > 0
    assert "caf\\xff.png" in (out / "index.html").read_text(encoding="utf-8")
    Image.open(out / "input_0.png").verify()

    second = interpret.main(base + ["--out", str(out), "--resume", "--inputs", "3"])
    assert [r["test_index"] for r in second["inputs"]] == [3]
    left = sorted(p.name for p in out.iterdir() if not p.name.startswith("."))
    assert left == ["cache", "input_3.png", "summary.csv", "summary.json", "summary.md"]
    capsys.readouterr()


def test_dollar_signs_are_drawn_literally_and_undecodable_names_drawn_escaped(tmp_path):
    fig = plots.image_grid([[plots.Cell(np.zeros((8, 8, 3)), None, "$\\alpha_{x$")]],
                           row_labels=[os.fsdecode(b"caf\xff")], title="price $5 and $6",
                           path=tmp_path / "f.png")
    texts = [t for t in fig.findobj(lambda a: hasattr(a, "get_parse_math"))
             if t.get_text()]
    assert texts and not any(t.get_parse_math() for t in texts)
    assert any("caf\\xff" in t.get_text() for t in texts)
    Image.open(tmp_path / "f.png").verify()


def test_display_names_and_cache_keys_survive_non_utf8_and_the_c_locale():
    bad = os.fsdecode(b"d\xe9j\xe0")  # Latin-1 bytes: not UTF-8
    assert files.display_name(bad) == "d\\xe9j\\xe0"
    assert files.name_bytes(bad) == b"d\xe9j\xe0"
    # Under the C locale a UTF-8 name arrives as escapes; shown as the characters it is.
    assert files.display_name("caf\udcc3\udca9") == "café"
    assert files.name_bytes("café") == "café".encode()
    assert common.markdown_cell("a|b\nc") == "a\\|b\\nc"


def test_scripts_print_unicode_under_a_c_locale(tmp_path):
    """A C locale (ASCII stdout, no UTF-8 mode): summaries with δ and Unicode paths print as
    escapes instead of failing after every file is written."""
    code = ("from ri_jax.cli import run_script; "
            "run_script(lambda argv: print('\\u03b4 donn\\u00e9es'), prog='x.py')")
    env = {**os.environ, "LC_ALL": "C", "LANG": "C", "PYTHONUTF8": "0",
           "PYTHONCOERCECLOCALE": "0"}
    env.pop("PYTHONIOENCODING", None)
    probe = [sys.executable, "-c", "import sys; print(sys.stdout.encoding)"]
    if b"ascii" not in subprocess.run(probe, capture_output=True, env=env).stdout.lower():
        pytest.skip("this Python does not use ASCII under the C locale")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, cwd=REPO, env=env,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr.decode()[-2000:]
    assert proc.stdout == b"\\u03b4 donn\\xe9es\n"


# ------------------------------------------------------------ limits and images


@pytest.mark.parametrize("value", ["0", "-1", "lots", "1e9"])
def test_max_image_pixels_setting_must_be_a_positive_integer(monkeypatch, value):
    monkeypatch.setenv("RI_JAX_MAX_IMAGE_PIXELS", value)
    with pytest.raises(RIInputError, match=r"\$RI_JAX_MAX_IMAGE_PIXELS: invalid setting"):
        max_image_pixels()
    monkeypatch.setenv("RI_JAX_MAX_IMAGE_PIXELS", "1000")
    assert max_image_pixels() == 1000


@pytest.mark.parametrize("size", [(1, 100_000), (1_000_000, 1)])
def test_extreme_aspect_ratios_are_cropped_before_they_are_resized(tmp_path, monkeypatch, size):
    Image.new("RGB", size, (200, 10, 10)).save(tmp_path / "strip.png")
    seen = []
    resize = Image.Image.resize

    def recording(self, new_size, *args, **kwargs):
        seen.append(new_size[0] * new_size[1])
        return resize(self, new_size, *args, **kwargs)

    monkeypatch.setattr(Image.Image, "resize", recording)
    out = decode_image(tmp_path / "strip.png", 96)
    assert out.shape == (96, 96, 3) and np.all(out == [200, 10, 10])
    assert seen and max(seen) == 96 * 96  # no intermediate beyond the output


def test_ordinary_aspect_ratios_decode_as_before(tmp_path):
    a = np.random.default_rng(0).integers(0, 255, (150, 100, 3), dtype=np.uint8)
    Image.fromarray(a).save(tmp_path / "tall.png")
    want = np.asarray(Image.fromarray(a).resize((96, 144), Image.BICUBIC))[24:120]
    np.testing.assert_array_equal(decode_image(tmp_path / "tall.png", 96), want)


# ------------------------------------------------------------ multi-process launches


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_a_coordinator_port_in_use_is_refused_before_jax_starts(monkeypatch):
    monkeypatch.setattr(jax.distributed, "initialize",
                        lambda *a, **k: pytest.fail("JAX was started on a port in use"))
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        config = distributed.LaunchConfig(f"127.0.0.1:{port}", 2, 0)
        with pytest.raises(ValueError, match=f"--coordinator: port {port} .* already in use"):
            distributed.initialize(config, timeout_s=5)


def test_join_timeout_is_validated_and_defaults_by_coordinator():
    assert distributed.default_join_timeout("127.0.0.1:1234") < 60
    assert distributed.default_join_timeout("localhost:1234") < 60
    assert distributed.default_join_timeout("node7:1234") == distributed.REMOTE_JOIN_TIMEOUT_S
    with pytest.raises(ValueError, match="--join-timeout"):
        distributed.initialize(distributed.LaunchConfig("127.0.0.1:1", 2, 1), timeout_s=0)
    p = common.add_distributed_args(__import__("argparse").ArgumentParser())
    assert p.parse_args(["--join-timeout", "2.5"]).join_timeout == 2.5
    with pytest.raises(SystemExit):
        p.parse_args(["--join-timeout", "0"])


def test_a_process_that_cannot_join_fails_in_bounded_time_naming_the_coordinator(tmp_path):
    """Process 0 alone (the library), and process 1 of a script with nothing listening, each
    with a join timeout of 2 s."""
    code = ("import sys; from ri_jax import distributed as d; "
            "d.initialize(d.LaunchConfig(sys.argv[1], 2, 0), timeout_s=2); print('joined')")
    script = [str(REPO / "experiments" / "interpret.py"), "--out", str(tmp_path / "o"),
              "--num-processes", "2", "--process-id", "1", "--join-timeout", "2", "--coordinator"]
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": str(REPO)}
    commands = {0: ["-c", code], 1: script}
    procs = {rank: subprocess.Popen([sys.executable, *command, f"127.0.0.1:{_free_port()}"],
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                    cwd=REPO, env=env) for rank, command in commands.items()}
    start = time.monotonic()
    results = {rank: p.communicate(timeout=120) for rank, p in procs.items()}
    assert time.monotonic() - start < 60
    for rank, (out, err) in results.items():
        assert procs[rank].returncode == 2, err[-2000:]
        assert "joined" not in out and "--join-timeout: process" in err and "127.0.0.1:" in err
    assert "process 1 did not connect to the coordinator" in results[0][1]
    assert "nothing is listening at the coordinator" in results[1][1]
    assert results[1][1].startswith("interpret.py: error: --join-timeout: process 1 of 2")
    assert not (tmp_path / "o").exists()  # nothing written by a run that never started


# ----------------------------------------------------------------- API misuse


def test_a_head_that_does_not_fit_the_features_is_named():
    feats = np.random.default_rng(0).standard_normal((6, 2, 2, 3)).astype(np.float32)
    w = jnp.ones((5, 2))  # expects 5 features, gets 12

    def head(psi):
        return psi.reshape(psi.shape[0], -1) @ w

    with pytest.raises(ValueError, match=r"head_fn: head\(ψ\) failed for ψ of shape \(2, 2, 3\)"):
        RepresentativeInterpreter(lambda x: x, head, feats, key=jax.random.key(0),
                                  is_features=True, progress=False)


def test_explain_names_a_model_whose_head_does_not_fit():
    from ri_jax.api import check_model_fits
    from ri_jax.model import Model
    model = Model.from_functions(lambda x: x[:, ::8, ::8, :], lambda psi: psi[:, 0, 0, :2] @ jnp.ones((3, 2)),
                                 image_size=16, class_names=("a", "b"))
    with pytest.raises(RIInputError, match=r"model: head\(ψ\) failed for ψ of shape \(2, 2, 3\)"):
        check_model_fits(model)


@pytest.mark.parametrize("kwargs,name", [
    (dict(batch_size=0), "batch_size"), (dict(batch_size=-3), "batch_size"),
    (dict(seed=-1), "seed"),
    (dict(images=["x.png", np.zeros((8, 8, 3), np.uint8)]), "images")])
def test_explain_refuses_bad_arguments_naming_them(kwargs, name):
    import ri_jax
    with pytest.raises(ValueError, match=f"^{name}: "):
        ri_jax.explain(**kwargs, progress=False)


# ------------------------------------------------------- per-input variant edges


def _linear_setup(curved: bool = False):
    feats = np.random.default_rng(0).standard_normal((6, 2, 2, 3)).astype(np.float32)
    w = jnp.asarray(np.random.default_rng(1).standard_normal((12, 2)), jnp.float32)

    def head(psi):
        z = psi.reshape(psi.shape[0], -1) @ w
        return jnp.tanh(z) if curved else z

    return feats, head


def test_authors_variant_caps_num_boundaries_with_a_warning():
    feats, head = _linear_setup()
    with pytest.warns(UserWarning, match="num_boundaries: 1000000 boundaries requested from "
                                         "only 6 references; using 6"):
        interp = RepresentativeInterpreter(lambda x: x, head, feats, key=jax.random.key(0),
                                           num_boundaries=1_000_000, is_features=True,
                                           progress=False, variant="authors")
    assert interp.num_boundaries == 6


def test_authors_variant_warns_about_a_head_that_is_not_piecewise_linear():
    feats, head = _linear_setup(curved=True)
    with pytest.warns(UserWarning, match="not piecewise linear"):
        RepresentativeInterpreter(lambda x: x, head, feats, key=jax.random.key(0),
                                  num_boundaries=3, is_features=True, progress=False,
                                  variant="authors")
    feats, head = _linear_setup(curved=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        RepresentativeInterpreter(lambda x: x, head, feats, key=jax.random.key(0),
                                  num_boundaries=3, is_features=True, progress=False,
                                  variant="authors")
