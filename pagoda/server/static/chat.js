// The chat page: streams /v1/chat/completions answers, with sampling settings, a stop button and an
// optional JSON schema (response_format); an image tab calls /v1/images/generations.
"use strict";

const $ = (id) => document.getElementById(id);
const chat = { history: [], controller: null, model: null };

function addMessage(role, text) {
  const div = document.createElement("div");
  div.className = "message " + role;
  const who = document.createElement("div");
  who.className = "role";
  who.textContent = role;
  const body = document.createElement("div");
  body.className = "content";
  body.textContent = text;
  div.append(who, body);
  $("messages").append(div);
  div.scrollIntoView({ block: "end" });
  return div;
}

function numberField(id) {
  const v = $(id).value.trim();
  return v === "" ? null : Number(v);
}

function requestBody() {
  const messages = [];
  const system = $("system").value.trim();
  if (system) messages.push({ role: "system", content: system });
  messages.push(...chat.history);
  const body = { messages, stream: true, stream_options: { include_usage: true } };
  if (chat.model) body.model = chat.model;
  const temperature = numberField("temperature");
  if (temperature !== null) body.temperature = temperature;
  const topP = numberField("top_p");
  if (topP !== null) body.top_p = topP;
  const topK = numberField("top_k");
  if (topK !== null && topK > 0) body.top_k = Math.round(topK);
  const minP = numberField("min_p");
  if (minP !== null && minP > 0) body.min_p = minP;
  const maxTokens = numberField("max_tokens");
  if (maxTokens !== null) body.max_tokens = Math.round(maxTokens);
  const seed = numberField("seed");
  if (seed !== null) body.seed = Math.round(seed);
  const schemaText = $("schema").value.trim();
  if (schemaText) {
    let schema;
    try {
      schema = JSON.parse(schemaText);
    } catch (e) {
      throw new Error("the JSON schema is not valid JSON: " + e.message);
    }
    body.response_format = { type: "json_schema", json_schema: { name: "reply", schema, strict: true } };
  }
  return body;
}

function setBusy(busy) {
  $("send").disabled = busy;
  $("stop").disabled = !busy;
}

async function send(text) {
  $("schema-error").textContent = "";
  chat.history.push({ role: "user", content: text });
  let body;
  try {
    body = requestBody();
  } catch (e) {
    chat.history.pop();
    $("schema-error").textContent = e.message;
    return;
  }
  addMessage("user", text);
  const reply = addMessage("assistant", "");
  const content = reply.querySelector(".content");
  reply.dataset.state = "waiting";
  chat.controller = new AbortController();
  setBusy(true);
  const started = performance.now();
  let firstTokenAt = null;
  let tokens = 0;
  let usage = null;
  let finish = null;
  try {
    const response = await Pagoda.fetch("/v1/chat/completions", {
      method: "POST", headers: { "Content-Type": "application/json" },
      body: JSON.stringify(body), signal: chat.controller.signal,
    });
    if (!response.ok) throw new Error(await Pagoda.errorText(response));
    reply.dataset.state = "streaming";
    for await (const data of Pagoda.events(response)) {
      if (data === "[DONE]") break;
      const chunk = JSON.parse(data);
      if (chunk.error) throw new Error(chunk.error.message);
      if (chunk.usage) usage = chunk.usage;
      for (const choice of chunk.choices || []) {
        const piece = choice.delta && choice.delta.content;
        if (piece) {
          if (firstTokenAt === null) firstTokenAt = performance.now();
          content.textContent += piece;
          tokens += 1;
          reply.scrollIntoView({ block: "end" });
        }
        if (choice.finish_reason) finish = choice.finish_reason;
      }
    }
    reply.dataset.state = "done";
    reply.dataset.finish = finish || "";
  } catch (e) {
    if (e.name === "AbortError") {
      reply.dataset.state = "stopped";
    } else {
      reply.dataset.state = "error";
      const err = document.createElement("div");
      err.className = "error";
      err.textContent = e.message;
      reply.append(err);
    }
  } finally {
    chat.controller = null;
    setBusy(false);
  }
  if (content.textContent) chat.history.push({ role: "assistant", content: content.textContent });
  else chat.history.pop();
  const seconds = (performance.now() - started) / 1000;
  const n = usage ? usage.completion_tokens : tokens;
  const parts = [n + " tokens", (n / Math.max(seconds, 1e-3)).toFixed(1) + " tok/s"];
  if (firstTokenAt !== null) parts.push("first token " + Math.round(firstTokenAt - started) + " ms");
  if (reply.dataset.state === "stopped") parts.push("stopped");
  else if (finish) parts.push("finish: " + finish);
  $("chat-stats").textContent = parts.join(" · ");
}

async function generateImages(ev) {
  ev.preventDefault();
  const prompt = $("image-prompt").value.trim();
  if (!prompt) return;
  const body = { prompt, sampler: $("image-sampler").value, n: Math.round(numberField("image-n") || 1),
                 steps: Math.round(numberField("image-steps") || 10), response_format: "b64_json" };
  const seed = numberField("image-seed");
  if (seed !== null) body.seed = Math.round(seed);
  const guidance = numberField("image-guidance");
  if (guidance !== null) body.guidance_scale = guidance;
  const size = $("image-size").value.trim();
  if (size) body.size = size;
  const negative = $("image-negative").value.trim();
  if (negative) body.negative_prompt = negative;
  $("image-generate").disabled = true;
  $("image-status").textContent = "generating…";
  const started = performance.now();
  try {
    const response = await Pagoda.fetch("/v1/images/generations", {
      method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body),
    });
    if (!response.ok) throw new Error(await Pagoda.errorText(response));
    const result = await response.json();
    const box = $("images");
    box.textContent = "";
    for (const item of result.data) {
      const img = document.createElement("img");
      img.src = "data:image/png;base64," + item.b64_json;
      img.alt = prompt;
      box.append(img);
    }
    $("image-status").textContent = result.data.length + " image(s), " + body.sampler + ", " + body.steps +
      " steps, " + ((performance.now() - started) / 1000).toFixed(1) + " s";
  } catch (e) {
    $("image-status").textContent = "error: " + e.message;
  } finally {
    $("image-generate").disabled = false;
  }
}

function showTab(id) {
  for (const tab of document.querySelectorAll(".tab")) tab.classList.toggle("active", tab.dataset.tab === id);
  $("chat-panel").hidden = id !== "chat-panel";
  $("image-panel").hidden = id !== "image-panel";
  $("settings").hidden = id !== "chat-panel";  // the sampling settings are the chat's
}

async function main() {
  const cfg = await Pagoda.loadConfig();
  for (const tab of document.querySelectorAll(".tab")) tab.onclick = () => showTab(tab.dataset.tab);
  if (cfg.image_model) {
    $("tab-image").hidden = false;
    for (const name of cfg.samplers) {
      const opt = document.createElement("option");
      opt.value = opt.textContent = name;
      $("image-sampler").append(opt);
    }
    $("image-form").onsubmit = generateImages;
  }
  $("chat-form").onsubmit = (ev) => {
    ev.preventDefault();
    const text = $("prompt").value.trim();
    if (!text || chat.controller) return;
    $("prompt").value = "";
    send(text);
  };
  $("prompt").onkeydown = (ev) => {
    if (ev.key === "Enter" && !ev.shiftKey) {
      ev.preventDefault();
      $("chat-form").requestSubmit();
    }
  };
  $("stop").onclick = () => { if (chat.controller) chat.controller.abort(); };
  $("clear").onclick = () => {
    if (chat.controller) chat.controller.abort();
    chat.history = [];
    $("messages").textContent = "";
    $("chat-stats").textContent = "";
  };
  await Pagoda.ensureKey();
  const models = await Pagoda.fetch("/v1/models");
  if (models.ok) {
    const list = await models.json();
    chat.model = list.data.length ? list.data[0].id : null;
    $("model-name").textContent = chat.model || "";
  }
  document.body.dataset.ready = "1";
}

main();
