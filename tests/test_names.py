import pytest

from app.errors import SparsegateError
from app.registry import name_from_source, validate_name


@pytest.mark.parametrize("name", ["gemma-3-270m", "wanda50-int8", "a", "v1.2_b", "x" * 64])
def test_valid_names(name):
    assert validate_name(name) == name


@pytest.mark.parametrize(
    "name",
    ["", "../evil", "a/b", "Gemma", "-lead", ".hidden", "a..b", "x" * 65, "sp ace", "name\n", "é"],
)
def test_invalid_names(name):
    with pytest.raises(SparsegateError, match="invalid variant name"):
        validate_name(name)


@pytest.mark.parametrize(
    ("source", "name"),
    [
        ("google/gemma-3-270m", "gemma-3-270m"),
        ("/data/models/My_Model/", "my_model"),
        ("Org/Llama 3 (8B)", "llama-3-8b"),
    ],
)
def test_name_from_source(source, name):
    assert name_from_source(source) == name
