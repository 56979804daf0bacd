"""The functional and nn suites really run once per kernel backend.

conftest.py parametrizes every test of the test_functional_* and test_nn* modules by backend. Under
pytest 9 that once produced [numpy] and [native] ids while both ran on the default backend (the
fixture was parametrized but pruned from the test's fixture closure). These tests fail if it recurs:
the first checks, by watching which code runs, that an F.* call dispatches to the kernels of the
test's backend; the second that every collected test of those suites has the backend fixture set up.
"""
import inspect
import os
import sys

import numpy as np

import minillm.functional as F
import minillm.kernels as kernels
from minillm.kernels import reference

from conftest import runs_on_every_backend

BACKEND_FIXTURES = ("backend", "kernel_backend")


def backend_of(item):
    """The backend an item's id says it runs on, from its parametrization."""
    params = getattr(item, "callspec", None)
    names = [n for n in BACKEND_FIXTURES if params is not None and n in params.params]
    assert len(names) == 1, f"{item.nodeid} is not parametrized by exactly one backend fixture"
    return names[0], params.params[names[0]]


def files_run_by(fn):
    """The source files of every Python function called while fn() runs."""
    files = set()

    def profile(frame, event, arg):
        if event == "call":
            files.add(os.path.realpath(frame.f_code.co_filename))

    previous = sys.getprofile()
    sys.setprofile(profile)
    try:
        fn()
    finally:
        sys.setprofile(previous)
    return files


def test_the_backend_of_the_test_id_is_the_one_that_runs(request):
    _, expected = backend_of(request.node)
    assert kernels.get_backend() == expected
    # the file, not the function object: wrappers (a mutation tool's, a dispatcher's) keep it
    reference_softmax = os.path.realpath(inspect.getsourcefile(inspect.unwrap(reference.softmax_forward)))
    ran = files_run_by(lambda: F.softmax(np.linspace(-1.0, 1.0, 6).reshape(2, 3)))
    if expected == "numpy":
        assert reference_softmax in ran, "the numpy backend did not run the reference softmax"
    else:
        assert "softmax_forward" in kernels.native_kernels()
        assert reference_softmax not in ran, "the native backend ran the reference softmax"


def test_every_test_of_the_functional_and_nn_suites_sets_up_its_backend(request):
    items = [item for item in request.session.items if runs_on_every_backend(item.module.__name__)]
    assert request.node in items
    for item in items:
        name, _ = backend_of(item)
        assert name in item.fixturenames, f"{item.nodeid}: the {name} fixture is parametrized but never set up"
