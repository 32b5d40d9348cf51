"""graphql-transport-ws clients for tests: a real one (the `websockets` package, against uvicorn)
and one over Starlette's TestClient (for the schema walks, which run without a server)."""

from __future__ import annotations

import json
import time
from typing import Any

from starlette.testclient import TestClient
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import ClientConnection, connect
from websockets.typing import Subprotocol

PROTOCOL = "graphql-transport-ws"


def init_payload(key: str | None, tenant: str | None = None) -> dict[str, str]:
    payload = {}
    if key is not None:
        payload["Authorization"] = f"Bearer {key}"
    if tenant is not None:
        payload["X-Tenant-Id"] = tenant
    return payload


class GraphQLWS:
    """One connection to a running server; messages of several subscriptions are kept apart."""

    def __init__(self, base_url: str, key: str | None, tenant: str | None = None, *, init: bool = True) -> None:
        self.ws: ClientConnection = connect(
            base_url.replace("http://", "ws://", 1) + "/graphql",
            subprotocols=[Subprotocol(PROTOCOL)],
            open_timeout=5,
            legacy=True,
        )
        self._kept: dict[str, list[dict[str, Any]]] = {}
        if init:
            self._send({"type": "connection_init", "payload": init_payload(key, tenant)})

    def _send(self, message: dict[str, Any]) -> None:
        self.ws.send(json.dumps(message))

    def recv(self, timeout: float = 5.0) -> dict[str, Any]:
        return dict(json.loads(self.ws.recv(timeout=timeout)))

    def ack(self) -> None:
        message = self.recv()
        assert message == {"type": "connection_ack"}, message

    def subscribe(self, op_id: str, query: str, variables: dict[str, Any] | None = None) -> None:
        self._send({"id": op_id, "type": "subscribe", "payload": {"query": query, "variables": variables or {}}})

    def next(self, op_id: str, timeout: float = 5.0) -> dict[str, Any]:
        """The next result of one subscription (its `data`; errors fail the test)."""
        payload = self.next_payload(op_id, timeout)
        assert not payload.get("errors"), payload
        return dict(payload["data"])

    def next_payload(self, op_id: str, timeout: float = 5.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while not self._kept.get(op_id):
            message = self.recv(timeout=max(deadline - time.monotonic(), 0.001))
            self._kept.setdefault(str(message.get("id")), []).append(message)
        message = self._kept[op_id].pop(0)
        assert message["type"] == "next", message
        return dict(message["payload"])

    def nothing_for(self, seconds: float) -> None:
        """Asserts that no message arrives for `seconds`."""
        try:
            message = self.recv(timeout=seconds)
        except TimeoutError:
            return
        raise AssertionError(f"expected silence, got {message}")

    def close_code(self, timeout: float = 5.0) -> int:
        """Reads until the server closes the connection; its close code."""
        deadline = time.monotonic() + timeout
        try:
            while True:
                self.ws.recv(timeout=max(deadline - time.monotonic(), 0.001))
        except ConnectionClosed as exc:
            assert exc.rcvd is not None, "closed without a close frame"
            return int(exc.rcvd.code)

    def close(self) -> None:
        self.ws.close()

    def __enter__(self) -> GraphQLWS:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def first_result(
    client: TestClient, document: str, variables: dict[str, Any], key: str | None, tenant: str | None = None
) -> tuple[int | None, dict[str, Any]]:
    """Over the TestClient: (close code, {}) if the server closes the connection, else
    (None, the first result's payload)."""
    with client.websocket_connect("/graphql", subprotocols=[PROTOCOL]) as ws:
        ws.send_json({"type": "connection_init", "payload": init_payload(key, tenant)})
        message = ws.receive()
        if message["type"] == "websocket.close":
            return int(message["code"]), {}
        assert json.loads(message["text"]) == {"type": "connection_ack"}, message
        ws.send_json({"id": "1", "type": "subscribe", "payload": {"query": document, "variables": variables}})
        result = ws.receive_json()
        assert result["type"] == "next", result
        return None, dict(result["payload"])
