"""The one seam to Celery's and kombu's internals (`inferfleet.upstream`): what it lists
is there in the installed versions, a worker refuses a version that lacks any of it, and
nothing of theirs is hooked into that the list does not name."""

import ast
import inspect
import pkgutil
import textwrap

import celery
import kombu
import pytest

import inferfleet
from inferfleet import transport, upstream
from inferfleet.errors import ConfigurationError
from inferfleet.upstream import Reliance
from inferfleet.worker import consumer, threads

#: inferfleet's subclasses of Celery's and kombu's classes.
SUBCLASSES = (transport.Message, transport.QoS, transport.Channel, transport.Transport,
              transport.SentinelChannel, transport.SentinelTransport, consumer.Consumer,
              threads.TaskPool)


def _is_upstream(cls: type) -> bool:
    return cls.__module__.split(".")[0] in ("kombu", "celery")


def _listed_names() -> set[str]:
    return {reliance.target.rpartition(".")[2].rpartition(":")[2]
            for reliance in upstream.RELIANCES}


def test_the_installed_celery_and_kombu_have_everything_the_worker_hooks_into() -> None:
    assert upstream.problems() == []
    upstream.check()  # what a worker runs as it starts


def test_a_version_lacking_a_hook_is_refused_naming_each_and_what_to_do() -> None:
    broken = (
        Reliance("kombu.transport.redis:Channel._brpop_begin", "a renamed method"),
        Reliance("kombu.transport.redis:Channel._put", "a changed signature",
                 ("self", "queue", "body")),
        Reliance("kombu.transport.redis:Channel._queue_cycle", "an attribute no longer set",
                 evidence=("kombu.transport.redis:Channel.__init__", "self._queue_order")),
        Reliance("kombu.transport.nonesuch:Channel", "a module gone"),
        Reliance("kombu.transport.redis:Channel._q_for_pri", "still there",
                 ("self", "queue", "pri")),
        # No source to read (a frozen build; here a C function): unknown, not refused.
        Reliance("kombu.transport.redis:Channel._queue_cycle", "source not installed",
                 evidence=("time:monotonic", "self._queue_cycle")),
    )
    with pytest.raises(ConfigurationError) as raised:
        upstream.check(broken)
    message = str(raised.value)
    assert f"kombu {kombu.__version__} and Celery {celery.__version__}" in message
    assert "Channel._brpop_begin is gone" in message
    assert "Channel._put takes (self, queue, message" in message
    assert "not (self, queue, body, ...)" in message
    assert "no longer mentions 'self._queue_order'" in message
    assert "nonesuch" in message
    assert "(inferfleet: a module gone)" in message
    assert "still there" not in message and "source not installed" not in message
    assert "inferfleet/upstream.py" in message and "pip install -e ." in message
    assert "kombu<5.8,>=5.7" in message  # the pin pyproject.toml gives the package


def test_every_upstream_method_inferfleet_overrides_is_listed() -> None:
    """An override of Celery's or kombu's leans on what they call it with and when: one
    added without its line in `upstream.RELIANCES` goes unchecked on their next release."""
    listed = _listed_names()
    unlisted = []
    for cls in SUBCLASSES:
        bases = [base for base in cls.__mro__ if _is_upstream(base)]
        for name, value in vars(cls).items():
            if name.startswith("__") and name != "__init__":
                continue
            overrides = any(name in vars(base) for base in bases)
            if overrides and callable(value) and name not in listed:
                unlisted.append(f"{cls.__qualname__}.{name}")
    assert unlisted == []


def test_only_the_seam_touches_a_private_name_of_celery_or_kombu() -> None:
    """Outside `upstream`, a listed private name is used only to define or call the
    override of it (`super()._put(...)`), and a subclass's methods use no private name
    of its upstream bases on `self`. (A check against a slip, not a proof: a private name
    reached some other way is for review to catch.)"""
    listed_private = {name for name in _listed_names() if name.startswith("_")}
    touched = []
    for module in pkgutil.walk_packages(inferfleet.__path__, "inferfleet."):
        if module.name in ("inferfleet.upstream", "inferfleet.__main__"):
            continue
        tree = ast.parse(inspect.getsource(__import__(module.name, fromlist=["_"])))
        # A name the module gives its own objects (cache's `self._put` script) is its own.
        own = {target.attr for node in ast.walk(tree) if isinstance(node, ast.Assign)
               for target in node.targets if isinstance(target, ast.Attribute)}
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and node.attr in listed_private - own and not (
                    isinstance(node.value, ast.Call)
                    and getattr(node.value.func, "id", None) == "super"):
                touched.append(f"{module.name}:{node.lineno} .{node.attr}")
    for cls in SUBCLASSES:
        own = {name for klass in cls.__mro__ if not _is_upstream(klass)
               for name in vars(klass)}
        theirs = {name for klass in cls.__mro__ if _is_upstream(klass)
                  for name in vars(klass) if name.startswith("_")
                  and not name.startswith("__")}
        tree = ast.parse(textwrap.dedent(inspect.getsource(cls)))
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) \
                    and node.value.id == "self" and node.attr in theirs - own:
                touched.append(f"{cls.__qualname__}: self.{node.attr}")
    assert touched == []
