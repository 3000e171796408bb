import pytest

from locbench.errors import UserError
from locbench.nets.split import Split


def modules(split: Split) -> list[list[int]]:
    return [list(split.unit_range(k)) for k in range(split.K)]


def test_every_unit():
    s = Split.every_unit(4)
    assert s.K == 4 and modules(s) == [[0], [1], [2], [3]]


def test_uniform_resnet32_k4_and_k16():
    quarters = [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9, 10, 11], [12, 13, 14, 15]]
    assert modules(Split.uniform(16, 4)) == quarters
    assert Split.uniform(16, 16) == Split.every_unit(16)
    # Unequal shares: earlier modules are the smaller ones.
    assert modules(Split.uniform(5, 2)) == [[0, 1], [2, 3, 4]]
    assert [s.last_unit(k) for s in [Split.uniform(5, 2)] for k in range(2)] == [1, 4]


def test_explicit_cuts():
    s = Split.from_cuts(16, [5, 10])
    assert s.starts == (0, 6, 11)
    assert modules(s)[1] == [6, 7, 8, 9, 10]
    assert Split.from_cuts(16, []).K == 1


@pytest.mark.parametrize("K", [0, 17, -1])
def test_K_out_of_range(K):
    with pytest.raises(UserError, match="between 1 and 16"):
        Split.uniform(16, K)


@pytest.mark.parametrize("cuts", [[15], [-1], [4, 4], [7, 3]])
def test_bad_cuts(cuts):
    with pytest.raises(UserError, match="0..14"):
        Split.from_cuts(16, cuts)
