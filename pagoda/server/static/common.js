// Shared by the chat page and the dashboard: the page configuration, the API key, and a reader of
// server-sent events over fetch (EventSource cannot send an Authorization header).
"use strict";

const Pagoda = (() => {
  const KEY_NAME = "pagoda-api-key";
  let config = null;

  async function loadConfig() {
    if (!config) config = await (await fetch("/ui/config.json")).json();
    return config;
  }

  function apiKey() { return sessionStorage.getItem(KEY_NAME) || ""; }

  function headers(extra) {
    const h = Object.assign({}, extra || {});
    const key = apiKey();
    if (key) h["Authorization"] = "Bearer " + key;
    return h;
  }

  // Shows the key dialog and resolves once the user has given a key.
  function askKey(message) {
    const dialog = document.getElementById("key-dialog");
    const form = document.getElementById("key-form");
    const input = document.getElementById("key-input");
    document.getElementById("key-message").textContent = message || "This server needs an API key.";
    input.value = "";
    return new Promise((resolve) => {
      form.onsubmit = (ev) => {
        ev.preventDefault();
        if (!input.value) return;
        sessionStorage.setItem(KEY_NAME, input.value);
        dialog.close();
        resolve();
      };
      if (!dialog.open) dialog.showModal();
      input.focus();
    });
  }

  async function ensureKey() {
    const cfg = await loadConfig();
    if (cfg.auth_required && !apiKey()) await askKey();
  }

  // fetch with the key; a 401 asks for the key again and retries.
  async function authedFetch(url, options) {
    const opts = Object.assign({}, options || {});
    for (;;) {
      const response = await fetch(url, Object.assign({}, opts, { headers: headers(opts.headers) }));
      if (response.status !== 401 || !(await loadConfig()).auth_required) return response;
      sessionStorage.removeItem(KEY_NAME);
      await askKey("The server refused that key: enter it again.");
    }
  }

  // Yields the data of each server-sent event of a streaming response.
  async function* events(response) {
    const reader = response.body.getReader();
    const decoder = new TextDecoder();
    let buffer = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buffer += decoder.decode(value, { stream: true });
      let cut;
      while ((cut = buffer.search(/\r?\n\r?\n/)) >= 0) {
        const block = buffer.slice(0, cut);
        buffer = buffer.slice(cut).replace(/^\r?\n\r?\n/, "");
        const data = block.split(/\r?\n/).filter((l) => l.startsWith("data:"))
          .map((l) => l.slice(5).replace(/^ /, "")).join("\n");
        if (data) yield data;
      }
    }
  }

  async function errorText(response) {
    try {
      const body = await response.json();
      return (body.error && body.error.message) || JSON.stringify(body);
    } catch (e) {
      return response.status + " " + response.statusText;
    }
  }

  return { loadConfig, apiKey, askKey, ensureKey, fetch: authedFetch, events, errorText };
})();
