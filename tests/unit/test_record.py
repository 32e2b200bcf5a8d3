"""`@record`: frozen dataclasses with one generated method (pivot/protocol/record.py)."""

from __future__ import annotations

import dataclasses
import pickle
from typing import ClassVar

import pytest

from pivot.protocol.record import MutableRecord, Record, mutable_record, record


@record
class Point(Record):
    """A record with every kind of field."""

    KIND: ClassVar[str] = "point"
    x: int
    y: int = 0
    tags: list[str] = dataclasses.field(default_factory=list)


@record
class Point3(Point):
    z: int = 0


@record
class Pair(Record):
    name: str
    n: int


def test_fields_in_order_with_defaults_and_fresh_factories() -> None:
    p = Point(1)
    assert (p.x, p.y, p.tags) == (1, 0, [])
    assert Point(1).tags is not p.tags
    assert [f.name for f in dataclasses.fields(Point)] == ["x", "y", "tags"]
    assert Point3(1, 2, ["a"], 3).z == 3
    assert Point(x=2, tags=["t"]).tags == ["t"]


def test_equality_and_hash_by_value_within_one_class() -> None:
    assert Point(1, 2) == Point(1, 2)
    assert Point(1, 2) != Point(1, 3)
    assert Point(1, 2) != Point3(1, 2)  # a subclass is another record, as with dataclasses
    assert len({Pair("a", 1), Pair("a", 1), Pair("a", 2)}) == 2
    assert hash(Pair("a", 1)) == hash(Pair("a", 1))
    with pytest.raises(TypeError, match="unhashable"):
        hash(Point(1, 2, ["list"]))  # a list field is unhashable, as with dataclasses


def test_frozen() -> None:
    p = Point(1)
    with pytest.raises(dataclasses.FrozenInstanceError):
        p.x = 2  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        del p.x  # type: ignore[misc]


def test_repr_replace_and_pickle() -> None:
    p = Point3(1, 2, ["a"], 3)
    assert repr(p) == "Point3(x=1, y=2, tags=['a'], z=3)"
    assert dataclasses.replace(p, y=5) == Point3(1, 5, ["a"], 3)
    assert pickle.loads(pickle.dumps(p)) == p
    assert Point.__doc__ == "A record with every kind of field."
    assert dataclasses.is_dataclass(p)


def test_missing_argument_is_a_type_error() -> None:
    with pytest.raises(TypeError):
        Point()  # type: ignore[call-arg]


def test_a_required_field_after_a_default_is_refused() -> None:
    class Bad(Record):
        a: int = 0
        b: int

    with pytest.raises(TypeError, match="'b' without a default follows one with a default"):
        record(Bad)


def test_only_subclasses_of_record() -> None:
    class Plain:
        a: int

    with pytest.raises(TypeError, match="must subclass Record"):
        record(Plain)  # type: ignore[type-var]


@record
class Indexed(Record):
    """Fields left out of comparison and repr, and one made after __init__."""

    rows: tuple[str, ...]
    note: str = dataclasses.field(default="", compare=False)
    seen: list[str] = dataclasses.field(default_factory=list, init=False, repr=False, compare=False)
    index: dict[str, int] = dataclasses.field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "index", {r: i for i, r in enumerate(self.rows)})


def test_compare_repr_and_init_false_as_dataclass_says() -> None:
    a, b = Indexed(("x", "y"), "one"), Indexed(("x", "y"), "two")
    assert a == b and hash(a) == hash(b)  # `note` is not compared
    assert repr(a) == "Indexed(rows=('x', 'y'), note='one')"
    assert (a.index, a.seen) == ({"x": 0, "y": 1}, []) and a.seen is not b.seen
    assert dataclasses.replace(a, rows=("z",)).index == {"z": 0}


@mutable_record
class Counter(MutableRecord):
    name: str
    hits: int = 0
    seen: set[str] = dataclasses.field(default_factory=set)


def test_a_mutable_record_is_assigned_compared_by_value_and_unhashable() -> None:
    c = Counter("a")
    c.hits += 2
    c.seen.add("x")
    assert c == Counter("a", 2, {"x"}) and c != Counter("a", 2)
    assert repr(c) == "Counter(name='a', hits=2, seen={'x'})"
    with pytest.raises(TypeError, match="unhashable"):
        hash(c)
    assert pickle.loads(pickle.dumps(Counter("b", 1))) == Counter("b", 1)


def test_each_kind_has_its_own_decorator() -> None:
    class Frozen(Record):
        a: int

    class Loose(MutableRecord):
        a: int

    with pytest.raises(TypeError, match="must subclass MutableRecord"):
        mutable_record(Frozen)  # type: ignore[type-var]
    with pytest.raises(TypeError, match="use @mutable_record"):
        record(Loose)


def test_the_first_instance_is_made_as_every_later_one() -> None:
    @record
    class Fresh(Record):  # never made before this test: its __init__ is compiled at its first call
        a: int
        b: list[int] = dataclasses.field(default_factory=list)

    @record
    class FreshChild(Fresh):
        c: int = 3

    with pytest.raises(TypeError):
        Fresh()  # type: ignore[call-arg]
    assert FreshChild(1).c == 3 and Fresh(1) == Fresh(1, [])
    assert Fresh(2, [5]).b == [5] and Fresh.__init__.__qualname__.endswith("Fresh.__init__")
