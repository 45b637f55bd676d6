// GET /v1/stream read with fetch, because EventSource cannot send the Authorization
// header. Reconnects with Last-Event-ID, so nothing is missed across a drop.

import { authHeaders } from "./api.js";

const RETRY_MS = [500, 1000, 2000, 5000];

function parse(block) {
  const frame = { event: "message", data: "", id: null };
  for (const line of block.split("\n")) {
    if (line.startsWith(":")) return null; // a heartbeat comment
    const colon = line.indexOf(":");
    if (colon < 0) continue;
    const field = line.slice(0, colon);
    const value = line.slice(colon + 1).replace(/^ /, "");
    if (field === "event") frame.event = value;
    else if (field === "data") frame.data += value;
    else if (field === "id") frame.id = value;
  }
  return frame.data ? frame : null;
}

export class LiveStream {
  // onEvent(event, data, id) for every frame; onState(text) for the connection status.
  constructor({ onEvent, onState, onRefused }) {
    this.onEvent = onEvent;
    this.onState = onState;
    this.onRefused = onRefused;
    this.lastId = null;
    this.controller = null;
    this.stopped = false;
  }

  start() {
    this.stopped = false;
    this.run();
  }

  stop() {
    this.stopped = true;
    this.controller?.abort();
  }

  async run() {
    let attempt = 0;
    while (!this.stopped) {
      try {
        const ended = await this.once();
        if (ended) attempt = 0;
      } catch (error) {
        if (this.stopped) return;
        if (error.status === 401 || error.status === 403) {
          this.onRefused(error);
          return;
        }
      }
      if (this.stopped) return;
      this.onState("reconnecting");
      const wait = RETRY_MS[Math.min(attempt, RETRY_MS.length - 1)];
      attempt += 1;
      await new Promise((resolve) => setTimeout(resolve, wait));
    }
  }

  // One connection; true once it had delivered frames (so the retry delay starts over).
  async once() {
    this.controller = new AbortController();
    const headers = { Accept: "text/event-stream" };
    if (this.lastId) headers["Last-Event-ID"] = this.lastId;
    const response = await fetch("/v1/stream", {
      headers: authHeaders(headers),
      signal: this.controller.signal,
      cache: "no-store",
    });
    if (!response.ok) {
      const error = new Error(`stream refused: ${response.status}`);
      error.status = response.status;
      throw error;
    }
    this.onState("live");
    const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
    let buffer = "";
    let delivered = false;
    for (;;) {
      const { value, done } = await reader.read();
      if (done) return delivered;
      buffer += value;
      let end;
      while ((end = buffer.indexOf("\n\n")) >= 0) {
        const frame = parse(buffer.slice(0, end));
        buffer = buffer.slice(end + 2);
        if (!frame) continue;
        if (frame.id) this.lastId = frame.id;
        delivered = true;
        this.onEvent(frame.event, JSON.parse(frame.data), frame.id);
      }
    }
  }
}
