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


@pytest.fixture(params=BACKENDS)
def backend(request):
    """Run a test once per kernel backend, restoring the default afterwards.

    Every test in the functional and nn suites gets it (see pytest_collection_modifyitems), so
    the whole gradcheck suite runs on the NumPy references and on the native kernels."""
    previous = kernels.get_backend()
    kernels.set_backend(request.param)
    yield request.param
    kernels.set_backend(previous)


def pytest_generate_tests(metafunc):
    """Give every test of the functional and nn suites the `backend` fixture."""
    name = metafunc.module.__name__.rsplit(".", 1)[-1]
    if (name.startswith("test_functional") or name.startswith("test_nn")) and "backend" not in metafunc.fixturenames:
        metafunc.fixturenames.append("backend")
        metafunc.parametrize("backend", BACKENDS, indirect=True)
