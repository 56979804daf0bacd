import os

import pytest
from hypothesis import HealthCheck, settings

import minillm.kernels as kernels

# ci: bounded examples so the suite stays well inside its time budget on 2 cores; dev: thorough.
settings.register_profile("ci", max_examples=20, deadline=None, print_blob=True,
                          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                                 HealthCheck.function_scoped_fixture])
settings.register_profile("dev", max_examples=200, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

BACKENDS = ["numpy"] + (["native"] if kernels.native.AVAILABLE else [])


def _switch_backend(name):
    previous = kernels.get_backend()
    kernels.set_backend(name)
    return previous


@pytest.fixture(params=BACKENDS)
def backend(request):
    """Run a test once per kernel backend, restoring the default afterwards (ask for it by name)."""
    previous = _switch_backend(request.param)
    yield request.param
    kernels.set_backend(previous)


@pytest.fixture(autouse=True)
def kernel_backend(request):
    """The backend of the functional and nn suites: parametrized there (see pytest_generate_tests),
    a no-op everywhere else.

    It is autouse so that it is in every test's initial fixture names: pytest prunes the fixture
    closure back to those names after pytest_generate_tests, so a fixture name appended to
    metafunc.fixturenames there is parametrized (the [numpy] id appears) but never set up
    (the test runs on the default backend). tests/test_functional_backend.py fails if that recurs."""
    if not hasattr(request, "param"):
        yield kernels.get_backend()
        return
    previous = _switch_backend(request.param)
    yield request.param
    kernels.set_backend(previous)


def runs_on_every_backend(module_name):
    """The test modules whose every test runs once per kernel backend."""
    name = module_name.rsplit(".", 1)[-1]
    return name.startswith("test_functional") or name.startswith("test_nn")


def pytest_generate_tests(metafunc):
    """Run every test of the functional and nn suites once per backend (tests that ask for
    `backend` by name are parametrized by it already)."""
    if runs_on_every_backend(metafunc.module.__name__) and "backend" not in metafunc.fixturenames:
        metafunc.parametrize("kernel_backend", BACKENDS, indirect=True)
