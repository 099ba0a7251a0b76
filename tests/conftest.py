"""Shared fixtures: a tiny VGG so the suite stays fast on 2 CPU cores.

The suite runs on every core (pytest-xdist, ``-n auto`` in pyproject.toml) and shares
one JAX persistent compilation cache, made fresh for the session, between its workers
and the scripts its tests start as subprocesses: they compile the same tiny model
again and again. A cached executable is the one XLA would compile, so nothing
checked changes; set ``JAX_COMPILATION_CACHE_DIR`` yourself to keep or move it. The
suite also compiles with ``TEST_XLA_FLAGS`` (below), which the subprocesses inherit.
"""

import functools
import os
import shutil
import tempfile

if "JAX_COMPILATION_CACHE_DIR" not in os.environ:  # before jax is imported (read at import)
    os.environ["JAX_COMPILATION_CACHE_DIR"] = tempfile.mkdtemp(prefix="ri-jax-test-xla-")
    os.environ["RI_JAX_TEST_OWNS_CACHE"] = os.environ["JAX_COMPILATION_CACHE_DIR"]
    os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
    os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")
# Most of the suite's time is XLA compiling small programs that then run once on tiny
# arrays. These flags make XLA's CPU backend compile faster: LLVM at optimisation level 0,
# the elemental emitters instead of the MLIR fusion emitters, and one LLVM module per
# program (the workers already keep every core busy). Every test compares
# answers computed under the same flags; tests/test_xla_settings.py checks that a whole
# interpretation gives XLA's default answers (the discrete ones exactly, the floats to
# rounding). The benchmarks, not the tests, measure optimised code. A flag already in
# XLA_FLAGS is left as it is.
TEST_XLA_FLAGS = ("--xla_backend_optimization_level=0", "--xla_cpu_use_fusion_emitters=false",
                  "--xla_cpu_parallel_codegen_split_count=1")
os.environ["XLA_FLAGS"] = " ".join(filter(None, [os.environ.get("XLA_FLAGS"), *(
    flag for flag in TEST_XLA_FLAGS
    if flag.partition("=")[0] not in os.environ.get("XLA_FLAGS", ""))]))

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ri_jax.model import Model, params_fingerprint
from ri_jax.models.vgg import ModelConfig, make_vgg
from ri_jax.protocols import methods
from ri_jax.variants import ri_variant

TINY = ModelConfig(arch="vgg11", width=1 / 16, image_size=32, num_classes=2, class_names=("a", "b"))


@pytest.fixture(scope="session")
def tiny_config():
    return TINY


@pytest.fixture(scope="session")
def tiny_model():
    fns = make_vgg(TINY)
    return fns, fns.init(jax.random.key(0))


_MODELS: dict = {}


def as_model(fns, params, image_size: int = 32):
    """The ``ri_jax.model.Model`` of a VGG's functions and parameters, one per pair (so
    compiled programs are shared between the tests that use it)."""
    key = (id(fns), id(params), image_size)
    if key not in _MODELS:
        classes = fns.apply(params, jnp.zeros((1, image_size, image_size, 3))).shape[-1]
        model = Model(features=functools.partial(fns.features, params),
                      head=functools.partial(fns.head, params), normalize=fns.normalize,
                      image_size=image_size, channels=3,
                      class_names=tuple(f"class {i}" for i in range(classes)),
                      source="test VGG", fingerprint=params_fingerprint(params))
        _MODELS[key] = (model, fns, params)  # keeps fns and params alive with their ids
    return _MODELS[key][0]


def forced_devices(count: int) -> str:
    """XLA_FLAGS for a subprocess with ``count`` host devices, keeping this session's flags."""
    return f"{os.environ.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count={count}"


PROTOCOL_SIZE = 32  # image side of protocol_model's images (the tiny VGG's input size)


def balanced(fns, params, raw):
    """Shifts the last bias so the tiny random model predicts both classes on ``raw``."""
    logits = np.asarray(fns.apply(params, fns.normalize(raw)))
    shift = np.median(logits[:, 0] - logits[:, 1])
    p = jax.tree.map(lambda a: a, params)
    p["params"]["fc_2"]["bias"] = params["params"]["fc_2"]["bias"].at[1].add(shift)
    return p


@pytest.fixture(scope="session")
def protocol_model(tiny_model):
    """(fns, params, raw [24, 32, 32, 3], psi, classes) of the tiny VGG, predicting both classes."""
    fns, params = tiny_model
    rng = np.random.default_rng(0)
    s = PROTOCOL_SIZE
    raw = (rng.random((24, s, s, 3)) * rng.random((24, 1, 1, 3))).astype(np.float32)
    params = balanced(fns, params, raw)
    psi = np.asarray(fns.features(params, fns.normalize(raw)))
    classes = np.asarray(fns.head(params, psi)).argmax(-1).astype(np.int32)
    assert 0 < classes.mean() < 1  # both classes present, so RI has work to do
    return fns, params, raw, psi, classes


@pytest.fixture(scope="session")
def protocol_ri(protocol_model):
    """(interpreter, RIInterpretations) at protocol_model's first 5 images, |Q| = 8, the
    paper's shared sample (its tests read ``reference_set.boundaries``)."""
    fns, params, raw, psi, _ = protocol_model
    interpreter = methods.make_interpreter(as_model(fns, params), psi, key=jax.random.key(3), num_boundaries=8,
                                           variant=ri_variant("paper"))
    return interpreter, methods.ri_interpretations(interpreter, as_model(fns, params), raw[:5], chunk_size=2)


# --compile-times N: where the suite's time goes. JAX reports each step of turning a
# function into an executable (tracing, lowering to MLIR, XLA's compilation) through
# jax.monitoring; these are summed per test, in every xdist worker, and the controller
# prints the N tests that spent most on them, and the N functions that cost most (each
# step's seconds and count, so many small eager ops show up as one jit(name) line, and
# how many compilations the shared persistent cache served). Subprocesses the tests
# start are not counted.
COMPILE_EVENTS = {"/jax/core/compile/jaxpr_trace_duration": "trace",
                  "/jax/core/compile/jaxpr_to_mlir_module_duration": "lower",
                  "/jax/core/compile/backend_compile_duration": "compile"}
CACHE_HIT = "/jax/compilation_cache/cache_hits"


def pytest_addoption(parser):
    parser.addoption("--compile-times", type=int, default=0, metavar="N",
                     help="print the N tests spending most time in JAX tracing, lowering and "
                          "XLA compilation (in-process only), and the suite's totals")


class CompileTimes:
    def __init__(self):
        self.per_test: dict[str, dict[str, float]] = {}
        # name: {step: [seconds, count]}; lowering and compilation name the module
        # (jit_f), tracing the function (f), so names are given as jit(f) throughout.
        self.per_function: dict[str, dict[str, list]] = {}
        self.cache_hits = 0
        self.current = "(collection)"
        jax.monitoring.register_event_duration_secs_listener(self.listen)
        jax.monitoring.register_event_listener(self.count_hit)

    def count_hit(self, event, **_):
        self.cache_hits += event == CACHE_HIT

    def listen(self, event, duration, fun_name=None, **_):
        if event in COMPILE_EVENTS:
            step = COMPILE_EVENTS[event]
            times = self.per_test.setdefault(self.current, {})
            times[step] = times.get(step, 0.0) + duration
            name = str(fun_name)
            name = f"jit({name[4:]})" if name.startswith("jit_") else (
                name if name.startswith("jit(") else f"jit({name})")
            function = self.per_function.setdefault(name, {}).setdefault(step, [0.0, 0])
            function[0] += duration
            function[1] += 1

    @pytest.hookimpl(tryfirst=True)
    def pytest_runtest_setup(self, item):
        self.current = item.nodeid

    def pytest_sessionfinish(self, session):
        if hasattr(session.config, "workerinput"):  # an xdist worker: hand them over
            session.config.workeroutput["compile_times"] = self.per_test
            session.config.workeroutput["compile_functions"] = self.per_function
            session.config.workeroutput["cache_hits"] = self.cache_hits

    @pytest.hookimpl(optionalhook=True)
    def pytest_testnodedown(self, node, error):
        for test, times in getattr(node, "workeroutput", {}).get("compile_times", {}).items():
            mine = self.per_test.setdefault(test, {})
            for step, t in times.items():
                mine[step] = mine.get(step, 0.0) + t
        for name, steps in getattr(node, "workeroutput", {}).get("compile_functions", {}).items():
            for step, (t, count) in steps.items():
                mine = self.per_function.setdefault(name, {}).setdefault(step, [0.0, 0])
                mine[0] += t
                mine[1] += count
        self.cache_hits += getattr(node, "workeroutput", {}).get("cache_hits", 0)

    def pytest_terminal_summary(self, terminalreporter, config):
        if hasattr(config, "workerinput"):
            return
        tr, n = terminalreporter, config.getoption("--compile-times")
        totals = {step: sum(t.get(step, 0.0) for t in self.per_test.values())
                  for step in COMPILE_EVENTS.values()}
        tr.section(f"JAX compile time: the {n} costliest tests (seconds)")
        tr.write_line("total: " + ", ".join(f"{k} {v:.1f}" for k, v in totals.items())
                      + f", all {sum(totals.values()):.1f}; compilations "
                      f"{sum(f.get('compile', [0, 0])[1] for f in self.per_function.values())}"
                      f", served by the persistent cache {self.cache_hits}")
        ranked = sorted(self.per_test.items(), key=lambda kv: -sum(kv[1].values()))
        for test, times in ranked[:n]:
            tr.write_line(f"{sum(times.values()):8.2f}  " + "  ".join(
                f"{k} {times.get(k, 0.0):6.2f}" for k in COMPILE_EVENTS.values()) + f"  {test}")
        tr.section(f"JAX compile time: the {n} costliest functions (seconds, count)")
        total = {name: sum(t for t, _ in steps.values()) for name, steps in self.per_function.items()}
        for name in sorted(total, key=lambda k: -total[k])[:n]:
            steps = self.per_function[name]
            tr.write_line(f"{total[name]:8.2f}  " + "  ".join(
                f"{k} {steps.get(k, [0.0, 0])[0]:6.2f} {steps.get(k, [0.0, 0])[1]:4d}"
                for k in COMPILE_EVENTS.values()) + f"  {name}")


def pytest_configure(config):
    if config.getoption("--compile-times") > 0 or hasattr(config, "workerinput") and \
            config.workerinput.get("compile_times"):
        config.pluginmanager.register(CompileTimes(), "ri_jax_compile_times")


@pytest.hookimpl(optionalhook=True)
def pytest_configure_node(node):
    """xdist: tell each worker to count too."""
    node.workerinput["compile_times"] = node.config.getoption("--compile-times") > 0


def pytest_unconfigure(config):
    """The process that made the session's compilation cache removes it (not the workers)."""
    owned = os.environ.get("RI_JAX_TEST_OWNS_CACHE")
    if owned and not hasattr(config, "workerinput") and owned == os.environ.get(
            "JAX_COMPILATION_CACHE_DIR"):
        shutil.rmtree(owned, ignore_errors=True)
