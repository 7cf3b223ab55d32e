"""liveinit.plain.Plain behaves like a frozen dataclass where the runtime relies on it."""
import pickle

import pytest

from liveinit.plain import Plain


class Point(Plain):
    __slots__ = ("x", "y", "tags", "extra")
    _defaults = {"y": 0}
    _factories = {"tags": dict, "extra": list}


def test_positional_keyword_and_defaults() -> None:
    p = Point(1, y=2)
    assert (p.x, p.y, p.tags, p.extra) == (1, 2, {}, [])
    assert Point(x=3).y == 0


def test_factories_give_fresh_objects() -> None:
    assert Point(1).tags is not Point(1).tags


def test_equality_hash_repr() -> None:
    assert Point(1, 2, {}, []) == Point(1, 2, {}, [])
    assert Point(1, 2) != Point(1, 3)
    assert Point(1) != (1, 0, {}, [])
    assert "Point(x=1, y=0" in repr(Point(1))

    class Pair(Plain):
        __slots__ = ("a", "b")

    assert hash(Pair(1, "x")) == hash(Pair(1, "x"))
    assert len({Pair(1, "x"), Pair(1, "x"), Pair(2, "x")}) == 2


def test_frozen() -> None:
    p = Point(1)
    with pytest.raises(AttributeError):
        p.x = 2
    with pytest.raises(AttributeError):
        del p.y
    with pytest.raises(AttributeError):
        p.other = 1   # no __dict__


def test_bad_arguments() -> None:
    with pytest.raises(TypeError, match="missing argument 'x'"):
        Point()
    with pytest.raises(TypeError, match="unexpected keyword argument 'z'"):
        Point(1, z=2)
    with pytest.raises(TypeError, match="multiple values"):
        Point(1, x=2)
    with pytest.raises(TypeError):
        Point(1, 2, {}, [], 5)


def test_pickle_and_replace() -> None:
    p = Point(1, 2, {"a": 1}, [3])
    assert pickle.loads(pickle.dumps(p)) == p
    q = p.replace(y=5)
    assert (q.x, q.y, p.y) == (1, 5, 2)
