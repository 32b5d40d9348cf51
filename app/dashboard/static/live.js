// A graphql-transport-ws client in a few lines (the protocol: github.com/enisdenjo/graphql-ws,
// PROTOCOL.md): connection_init with the key, subscribe, next, ping/pong. It reconnects with
// backoff and subscribes again; a close in 4400-4499 (a refused or revoked key) is final.
"use strict";

class MeterkitLive {
  // payload: connection_init's, {Authorization: "Bearer <key>", "X-Tenant-Id"?: "ten_..."}.
  // onStatus(status, reason): "on" (acknowledged), "off" (reconnecting), "failed" (refused).
  constructor(payload, onStatus) {
    this.payload = payload;
    this.onStatus = onStatus;
    this.subs = new Map();
    this.nextId = 1;
    this.retry = 0;
    this.acked = false;
    this.closed = false;
    this.open();
  }

  open() {
    const scheme = location.protocol === "https:" ? "wss://" : "ws://";
    const ws = (this.ws = new WebSocket(scheme + location.host + "/graphql", "graphql-transport-ws"));
    ws.onopen = () => ws.send(JSON.stringify({ type: "connection_init", payload: this.payload }));
    ws.onmessage = (event) => this.receive(JSON.parse(event.data));
    ws.onclose = (event) => {
      this.acked = false;
      if (this.closed) return;
      if (event.code >= 4400 && event.code < 4500) {
        // Refused (bad or revoked key, unknown tenant): retrying would be refused again.
        this.onStatus("failed", event.reason || `closed (${event.code})`);
        return;
      }
      this.onStatus("off");
      const delay = Math.min(1000 * 2 ** this.retry++, 15000);
      this.timer = setTimeout(() => this.open(), delay);
    };
  }

  receive(message) {
    switch (message.type) {
      case "connection_ack":
        this.acked = true;
        this.retry = 0;
        this.onStatus("on");
        for (const [id, sub] of this.subs) this.send(id, sub);
        break;
      case "next": {
        const sub = this.subs.get(message.id);
        const payload = message.payload || {};
        if (payload.errors && payload.errors.length) this.onStatus("failed", payload.errors[0].message);
        else if (sub) sub.onData(payload.data);
        break;
      }
      case "error":
        this.onStatus("failed", (message.payload && message.payload[0] && message.payload[0].message) || "error");
        break;
      case "ping":
        this.ws.send(JSON.stringify({ type: "pong" }));
        break;
      default:
        break;
    }
  }

  subscribe(query, onData) {
    const id = String(this.nextId++);
    const sub = { query, onData };
    this.subs.set(id, sub);
    if (this.acked) this.send(id, sub);
  }

  send(id, sub) {
    this.ws.send(JSON.stringify({ id, type: "subscribe", payload: { query: sub.query } }));
  }

  close() {
    this.closed = true;
    clearTimeout(this.timer);
    if (this.ws.readyState <= 1) this.ws.close(1000);
  }
}

window.MeterkitLive = MeterkitLive;
