"""Cutting off an abandoned exchange: its sockets are shut down from another thread, also
while it connects (to the endpoint, through a proxy's CONNECT, over TLS), a finished
exchange is left alone, and all of it through public names of urllib3 and requests only."""

from __future__ import annotations

import ast
import socket
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from faultservers import FaultServer, Reply, Silent, make_tls

import phonehome_plugin.delivery.cutoff
import phonehome_plugin.delivery.transport
import phonehome_plugin.reports.location
from phonehome_plugin.delivery.cutoff import AbandonedError, Exchange, adapter

WAIT = 5.0  # seconds a blocked read may take before the test calls it hung


@pytest.fixture
def pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    """A connected pair: the first end stands for a POST's socket, the second for the server."""
    ours, theirs = socket.socketpair()
    ours.settimeout(WAIT)
    theirs.settimeout(WAIT)
    yield ours, theirs
    ours.close()
    theirs.close()


def read_blocked_until(sock: socket.socket, action: threading.Timer) -> bytes:
    """Block in ``recv`` on ``sock`` while ``action`` fires; what it read. Only a shut
    down socket reads ``b""`` here: one left alone raises ``TimeoutError`` after
    :data:`WAIT` (the timer may fire before or after ``recv`` blocks; both are cut)."""
    action.start()
    try:
        return sock.recv(1)
    finally:
        action.join()


def test_abandon_ends_a_blocked_read_at_once(pair: tuple[socket.socket, socket.socket]) -> None:
    ours, theirs = pair
    exchange = Exchange()
    exchange.track(ours)
    assert read_blocked_until(ours, threading.Timer(0.01, exchange.abandon)) == b""
    assert theirs.recv(1) == b""  # the other end sees the hang-up too


def test_a_socket_tracked_after_abandon_is_shut_at_once(
    pair: tuple[socket.socket, socket.socket],
) -> None:
    ours, theirs = pair
    exchange = Exchange()
    exchange.abandon()
    exchange.track(ours)
    assert ours.recv(1) == b""
    assert theirs.recv(1) == b""


def test_a_finished_exchange_is_left_alone(pair: tuple[socket.socket, socket.socket]) -> None:
    ours, theirs = pair
    exchange = Exchange()
    exchange.track(ours)
    exchange.finish()
    exchange.abandon()
    late, late_theirs = socket.socketpair()
    with late, late_theirs:
        exchange.track(late)
        exchange.abandon()
        late.sendall(b"y")
        assert late_theirs.recv(1) == b"y"
    ours.sendall(b"x")
    assert theirs.recv(1) == b"x"


def test_sockets_the_adapter_opens_inside_the_block_are_cut_off() -> None:
    import requests

    server = FaultServer(then=Silent())
    try:
        with Exchange() as exchange, requests.Session() as session:
            session.mount("http://", adapter())

            # Abandoned once the server has the request, so the cut lands on a connected
            # socket blocked in its read: a connection error at once, not the read
            # timeout (``ReadTimeout`` is no ``ConnectionError``).
            def abandon_once_requested() -> None:
                if server.wait_for(lambda s: len(s.requests) == 1, WAIT):
                    exchange.abandon()

            watcher = threading.Thread(target=abandon_once_requested)
            watcher.start()
            with pytest.raises(requests.exceptions.ConnectionError):
                session.post(server.url, data=b"{}", timeout=WAIT)
            watcher.join()
        assert server.wait_for(lambda s: len(s.hangups) == 1, WAIT)
    finally:
        server.close()


# While connecting ------------------------------------------------------------------------


def session_with_adapter() -> Any:
    """A session through :func:`adapter`, blind to proxies and CA bundles from the
    environment, so that each test decides alone where its POST goes."""
    import requests

    session = requests.Session()
    session.trust_env = False
    session.mount("http://", adapter())
    session.mount("https://", adapter())
    return session


def causes(error: BaseException) -> list[BaseException]:
    """``error`` and what it came of: requests and urllib3 wrap the socket's error in
    theirs (as cause, context, ``reason`` or argument)."""
    seen: list[BaseException] = []
    pending: list[object] = [error]
    while pending:
        item = pending.pop()
        if isinstance(item, BaseException) and all(item is not s for s in seen):
            seen.append(item)
            pending += [item.__cause__, item.__context__, getattr(item, "reason", None)]
            pending += item.args
    return seen


def timed_out(error: BaseException) -> bool:
    """Whether a timeout is among the causes of ``error``: a cut-off never is one, a
    wait left alone always ends in one."""
    import urllib3

    timeouts = (TimeoutError, urllib3.exceptions.TimeoutError)
    return any(isinstance(cause, timeouts) for cause in causes(error))


def test_a_connection_made_after_abandon_never_connects() -> None:
    import requests

    server = FaultServer(then=Reply(202))
    try:
        with Exchange() as exchange, session_with_adapter() as session:
            exchange.abandon()
            with pytest.raises(requests.exceptions.ConnectionError) as raised:
                session.post(server.url, data=b"{}", timeout=WAIT)
        # Refused before connecting: a connection shut once it had connected fails the
        # same way, but of a reset or a hang-up, not of this.
        assert any(isinstance(cause, AbandonedError) for cause in causes(raised.value))
        assert server.requests == []
    finally:
        server.close()


@pytest.fixture
def gated_resolver(monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[threading.Event, Any]]:
    """``localhost`` resolves only once the test calls the returned release; the event
    is set when a resolution of it has begun."""
    real = socket.getaddrinfo
    resolving, released = threading.Event(), threading.Event()

    def gated(host: Any, *args: Any, **kwargs: Any) -> Any:
        if host == "localhost":
            resolving.set()
            released.wait(WAIT)
        return real(host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", gated)
    yield resolving, released.set
    released.set()


@pytest.mark.parametrize("scheme", ["http", "https"])
def test_a_connection_abandoned_while_connecting_is_shut_once_connected(
    scheme: str, tmp_path: Path, gated_resolver: tuple[threading.Event, Callable[[], None]]
) -> None:
    import requests

    resolving, release = gated_resolver
    tls = make_tls(tmp_path) if scheme == "https" else None
    server = FaultServer(then=Reply(202), tls=tls.server if tls else None)
    # localhost is in the test certificate: over TLS the handshake succeeds, so only
    # the cut-off stops the request (a connection left alone is answered 202).
    url = server.url.replace("127.0.0.1", "localhost")
    try:
        with Exchange() as exchange, session_with_adapter() as session:

            def abandon_while_resolving() -> None:
                assert resolving.wait(WAIT)
                exchange.abandon()
                release()

            watcher = threading.Thread(target=abandon_while_resolving)
            watcher.start()
            with pytest.raises(requests.exceptions.ConnectionError):
                session.post(
                    url, data=b"{}", timeout=WAIT, verify=str(tls.ca_file) if tls else True
                )
            watcher.join()
        assert server.requests == [], "the request never went out"
    finally:
        server.close()


def abandon_once(server: FaultServer, exchange: Exchange, requests: int = 1) -> threading.Thread:
    """A thread that abandons ``exchange`` once ``server`` has seen ``requests`` requests."""

    def watch() -> None:
        if server.wait_for(lambda s: len(s.requests) == requests, WAIT):
            exchange.abandon()

    thread = threading.Thread(target=watch)
    thread.start()
    return thread


def test_a_connect_to_a_proxy_that_never_answers_is_cut_off() -> None:
    import requests

    # A proxy that reads the CONNECT and never answers it: only the cut-off, or the
    # timeout, ends the wait for its answer.
    proxy = FaultServer(then=Silent())
    try:
        with Exchange() as exchange, session_with_adapter() as session:
            watcher = abandon_once(proxy, exchange)
            with pytest.raises(requests.exceptions.ConnectionError) as raised:
                session.post(
                    "https://127.0.0.1:9/v1/reports",
                    data=b"{}",
                    timeout=WAIT,
                    proxies={"https": f"http://127.0.0.1:{proxy.port}"},
                )
            watcher.join()
        [connect] = proxy.requests
        assert connect.method == "CONNECT"
        assert not timed_out(raised.value), "cut off, not timed out"
        assert proxy.wait_for(lambda s: len(s.hangups) == 1, WAIT)
    finally:
        proxy.close()


def test_a_body_read_after_the_connection_closed_is_cut_off_too() -> None:
    """``Connection: close`` makes ``http.client`` close the connection (its ``sock`` is
    then None) while the response goes on reading the socket: the exchange's duplicate
    still cuts that read."""

    listener = socket.create_server(("127.0.0.1", 0))
    hung_up = threading.Event()

    def serve() -> None:
        conn, _ = listener.accept()
        with conn:
            conn.settimeout(WAIT)
            request = b""
            while not request.endswith(b"{}"):
                request += conn.recv(65536)
            conn.sendall(b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 10\r\n\r\n")
            if conn.recv(1) == b"":  # the client hung up: no body byte ever comes
                hung_up.set()

    server = threading.Thread(target=serve, daemon=True)
    server.start()
    url = f"http://127.0.0.1:{listener.getsockname()[1]}/v1/reports"
    try:
        with Exchange() as exchange, session_with_adapter() as session:
            response = session.post(url, data=b"{}", timeout=WAIT, stream=True)
            assert response.status_code == 200
            cut = threading.Timer(0.01, exchange.abandon)
            cut.start()
            try:
                body = response.raw.read(10)
            except Exception as error:
                assert not timed_out(error), "cut off, not timed out"
            else:
                assert body == b""  # urllib3 1.26 reads a cut body as its end
            finally:
                cut.join()
                response.close()
        server.join(WAIT)
        assert hung_up.is_set()
    finally:
        listener.close()


# Public names only -------------------------------------------------------------------------

LIBRARIES = ("urllib3", "requests")
MODULES = [
    phonehome_plugin.delivery.cutoff,
    phonehome_plugin.delivery.transport,
    phonehome_plugin.reports.location,
]


def private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def private_uses(source: str) -> list[str]:
    """Where ``source`` names something private of urllib3 or requests, or might: an
    underscore name imported from them, an underscore attribute read off anything but
    ``self`` in the module's own classes (no bases, never a base), a ``getattr`` and
    the like of an underscore name, and in any other class (derived from theirs, or
    mixed into one) an underscore method or class attribute, which would override
    theirs."""
    tree = ast.parse(source)
    classes = [node for node in ast.walk(tree) if isinstance(node, ast.ClassDef)]
    bases = {base.id for c in classes for base in c.bases if isinstance(base, ast.Name)}
    own = [c for c in classes if not c.bases and c.name not in bases]
    found = imported_privately(tree) + reflected(tree)
    allowed = {
        id(node)
        for c in own
        for node in ast.walk(c)
        if isinstance(node, ast.Attribute)
        and isinstance(node.value, ast.Name)
        and node.value.id == "self"
    }
    found += [
        f"line {node.lineno}: .{node.attr}"
        for node in ast.walk(tree)
        if isinstance(node, ast.Attribute) and private(node.attr) and id(node) not in allowed
    ]
    for cls in (c for c in classes if c not in own):
        for item in cls.body:
            names = [item.name] if isinstance(item, ast.FunctionDef | ast.AsyncFunctionDef) else []
            if isinstance(item, ast.Assign | ast.AnnAssign):
                targets = item.targets if isinstance(item, ast.Assign) else [item.target]
                names = [t.id for t in targets if isinstance(t, ast.Name)]
            found += [f"line {item.lineno}: {cls.name}.{n}" for n in names if private(n)]
    return found


def imported_privately(tree: ast.Module) -> list[str]:
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            parts = [(node.lineno, p) for a in node.names for p in a.name.split(".")]
            roots = {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            module = (node.module or "").split(".")
            parts = [(node.lineno, p) for p in [*module, *(a.name for a in node.names)]]
            roots = {module[0]}
        else:
            continue
        if roots & set(LIBRARIES):
            found += [f"line {line}: imports {part}" for line, part in parts if private(part)]
    return found


def reflected(tree: ast.Module) -> list[str]:
    """``getattr(x, "_name")`` and its kin: a private name spelt as a string."""
    return [
        f"line {node.lineno}: {node.func.id}(..., {arg.value!r})"
        for node in ast.walk(tree)
        if isinstance(node, ast.Call)
        and isinstance(node.func, ast.Name)
        and node.func.id in ("getattr", "setattr", "hasattr", "delattr")
        for arg in node.args[1:2]
        if isinstance(arg, ast.Constant) and isinstance(arg.value, str) and private(arg.value)
    ]


@pytest.mark.parametrize("module", MODULES, ids=lambda m: m.__name__.rsplit(".", 1)[1])
def test_no_private_name_of_urllib3_or_requests_is_used(module: Any) -> None:
    assert private_uses(Path(module.__file__).read_text()) == []


@pytest.mark.parametrize(
    "source",
    [
        "from urllib3.connection import HTTPConnection\n"
        "class C(HTTPConnection):\n    def _new_conn(self): return super()._new_conn()\n",
        "class Mixin:\n    def _new_conn(self): pass\nclass C(Mixin, object): pass\n",
        "class Mixin:\n    def connect(self): self._tunnel()\nclass C(Mixin, object): pass\n",
        "import urllib3\nx = urllib3.connection._TYPE_SOCKET_OPTIONS\n",
        "from urllib3._collections import HTTPHeaderDict\n",
        "from urllib3.util.connection import _set_socket_options\n",
        "def f(conn):\n    return getattr(conn, '_tunnel_host', None)\n",
        "def f(conn):\n    return conn._tunnel_host\n",
        "from urllib3 import PoolManager\nclass P(PoolManager):\n    _flag = 1\n",
    ],
    ids=[
        "override",
        "mixin override",
        "mixin call",
        "module attr",
        "module",
        "name",
        "getattr",
        "attribute",
        "class attr",
    ],
)
def test_the_private_name_check_catches_each_kind(source: str) -> None:
    assert private_uses(source) != []


def test_the_private_name_check_allows_the_modules_own_private_names() -> None:
    source = (
        "import threading\n"
        "class Own:\n    def __init__(self): self._lock = threading.Lock()\n"
        "    def _helper(self): return self._lock\n"
        "def _function(): return Own()\n"
    )
    assert private_uses(source) == []
