"""Small synthetic sequences generated once per test session (shared with tests/priors)."""
import pytest


@pytest.fixture(scope="session")
def synthetic_root(tmp_path_factory):
    return tmp_path_factory.getbasetemp() / "synthetic_cache"


@pytest.fixture(scope="session")
def make_seq(synthetic_root):
    from mast3r_slam.datasets.synthetic import SyntheticDataset

    def make(spec):
        return SyntheticDataset(spec, cache_root=synthetic_root, progress=False)

    return make
