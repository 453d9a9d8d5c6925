// The live dashboard: one server-sent-events stream (/dashboard/stream, read with fetch so it can carry
// the API key), at most ~10 frames a second, drawn into a KV block map, a batch timeline and cards.
"use strict";

const $ = (id) => document.getElementById(id);
const TIMELINE_STEPS = 160;  // steps drawn
const FLASH_MS = 900;        // hit / evict animation
const COLORS = {};
for (const name of ["free", "cached", "owned", "hit", "evict", "prefill", "decode", "jump", "spec", "steptime",
                    "batch"]) {
  COLORS[name] = getComputedStyle(document.documentElement).getPropertyValue("--" + name).trim();
}

// Each request keeps one colour while the page is open: hues a golden angle apart, in order of first sight.
const ownerHues = new Map();
function ownerColor(id) {
  let hue = ownerHues.get(id);
  if (hue === undefined) {
    hue = (ownerHues.size * 137.508 + 35) % 360;
    ownerHues.set(id, hue);
    if (ownerHues.size > 4096) ownerHues.delete(ownerHues.keys().next().value);
  }
  return "hsl(" + hue.toFixed(1) + ", 68%, 58%)";
}

function fmt(value, digits, unit) {
  if (value === null || value === undefined || Number.isNaN(value)) return "–";
  return value.toFixed(digits) + (unit || "");
}

function ms(seconds) {
  if (seconds === null || seconds === undefined) return "–";
  return seconds < 1 ? (seconds * 1000).toFixed(seconds < 0.01 ? 1 : 0) + " ms" : seconds.toFixed(2) + " s";
}

function pct(x) { return x === null || x === undefined ? "–" : (100 * x).toFixed(x < 0.01 ? 2 : 1) + "%"; }

// Sizes a canvas's backing store to its CSS box; returns [context, width, height] in CSS pixels.
function fitCanvas(canvas) {
  const ratio = window.devicePixelRatio || 1;
  const w = canvas.clientWidth, h = canvas.clientHeight;
  if (canvas.width !== Math.round(w * ratio) || canvas.height !== Math.round(h * ratio)) {
    canvas.width = Math.round(w * ratio);
    canvas.height = Math.round(h * ratio);
  }
  const ctx = canvas.getContext("2d");
  ctx.setTransform(ratio, 0, 0, ratio, 0, 0);
  return [ctx, w, h];
}

class ReplicaView {
  constructor(index, count) {
    const node = $("replica-template").content.firstElementChild.cloneNode(true);
    node.dataset.replica = index;
    if (count > 1) node.querySelector(".replica-title").textContent = "KV cache · replica " + index;
    $("replicas").append(node);
    this.root = node;
    this.blockCanvas = node.querySelector("canvas.blockmap");
    this.timelineCanvas = node.querySelector("canvas.timeline");
    this.blocks = null;
    this.prevState = null;
    this.flashStart = null;
    this.flashKind = null;  // 1 hit, 2 evict
    this.hits = 0;
    this.evictions = 0;
    this.steps = [];
    this.layout = null;
    this.animating = false;
    this.blockCanvas.addEventListener("mousemove", (ev) => this.hover(ev));
  }

  update(rep) {
    if (rep.blocks) this.updateBlocks(rep.blocks);
    for (const s of rep.steps) this.steps.push(s);
    if (this.steps.length > TIMELINE_STEPS) this.steps.splice(0, this.steps.length - TIMELINE_STEPS);
    this.drawTimeline();
  }

  updateBlocks(blocks) {
    const n = blocks.num_blocks;
    if (!this.flashStart || this.flashStart.length !== n) {
      this.flashStart = new Float64Array(n);
      this.flashKind = new Int8Array(n);
      this.prevState = null;
    }
    const now = performance.now();
    const prev = this.prevState, state = blocks.state;
    if (prev) {
      for (let b = 0; b < n; b++) {
        const was = prev[b], is = state[b];
        if (was === is) continue;
        // a hit: a block only the cache held is now used by a request, and still cached
        if (was === "c" && is === "h") { this.flashKind[b] = 1; this.flashStart[b] = now; this.hits++; }
        // an eviction: a cached block left the cache (freed, or reused for other tokens)
        else if ((was === "c" || was === "h") && (is === "." || is === "o")) {
          this.flashKind[b] = 2; this.flashStart[b] = now; this.evictions++;
        }
      }
    }
    this.prevState = state;
    this.blocks = blocks;
    const count = { ".": 0, c: 0, o: 0, h: 0 };
    for (let b = 0; b < n; b++) count[state[b]]++;
    const map = this.root.querySelector(".blockmap-wrap");
    map.dataset.total = n;
    map.dataset.free = count["."];
    map.dataset.cached = count.c;
    map.dataset.owned = count.o + count.h;
    map.dataset.hits = this.hits;
    map.dataset.evictions = this.evictions;
    this.root.querySelector(".n-free").textContent = count["."];
    this.root.querySelector(".n-cached").textContent = count.c;
    this.root.querySelector(".n-owned").textContent = count.o;
    this.root.querySelector(".n-shared").textContent = count.h;
    this.root.querySelector(".n-hits").textContent = this.hits;
    this.root.querySelector(".n-evictions").textContent = this.evictions;
    this.drawBlocks();
  }

  drawBlocks() {
    const blocks = this.blocks;
    if (!blocks) return;
    const [ctx, w, h] = fitCanvas(this.blockCanvas);
    const n = blocks.num_blocks;
    // the largest square cell that fits every block
    let cell = Math.max(2, Math.floor(Math.sqrt((w * h) / n)));
    while (cell > 2 && Math.floor(w / cell) * Math.floor(h / cell) < n) cell--;
    const cols = Math.max(1, Math.floor(w / cell));
    this.layout = { cell, cols };
    const gap = cell >= 6 ? 1 : 0;
    ctx.clearRect(0, 0, w, h);
    const now = performance.now();
    let flashing = false;
    for (let b = 0; b < n; b++) {
      const x = (b % cols) * cell, y = Math.floor(b / cols) * cell;
      const s = blocks.state[b];
      let color = COLORS.free;
      if (s === "c") color = COLORS.cached;
      else if (s === "o" || s === "h") {
        const o = blocks.owner[b];
        color = o >= 0 ? ownerColor(blocks.owners[o]) : COLORS.owned;
      }
      ctx.fillStyle = color;
      ctx.fillRect(x, y, cell - gap, cell - gap);
      if (s === "h" && cell >= 6) {  // also in the prefix cache: a white core
        ctx.fillStyle = "#ffffff";
        const c = Math.max(1, Math.floor(cell / 4));
        ctx.fillRect(x + (cell - gap - c) / 2, y + (cell - gap - c) / 2, c, c);
      }
      const age = now - this.flashStart[b];
      if (this.flashKind[b] && age < FLASH_MS) {
        flashing = true;
        ctx.globalAlpha = 1 - age / FLASH_MS;
        ctx.fillStyle = this.flashKind[b] === 1 ? COLORS.hit : COLORS.evict;
        ctx.fillRect(x, y, cell - gap, cell - gap);
        ctx.globalAlpha = 1;
      }
    }
    if (flashing && !this.animating) {
      this.animating = true;
      requestAnimationFrame(() => { this.animating = false; this.drawBlocks(); });
    }
  }

  hover(ev) {
    if (!this.blocks || !this.layout) return;
    const r = this.blockCanvas.getBoundingClientRect();
    const col = Math.floor((ev.clientX - r.left) / this.layout.cell);
    const row = Math.floor((ev.clientY - r.top) / this.layout.cell);
    const b = row * this.layout.cols + col;
    const label = this.root.querySelector(".block-hover");
    if (col >= this.layout.cols || b < 0 || b >= this.blocks.num_blocks) { label.textContent = ""; return; }
    const names = { ".": "free", c: "cached (evictable)", o: "owned", h: "owned, cached" };
    const o = this.blocks.owner[b];
    label.textContent = "block " + b + ": " + names[this.blocks.state[b]] + (o >= 0 ? " by " + this.blocks.owners[o] : "");
  }

  drawTimeline() {
    const [ctx, w, h] = fitCanvas(this.timelineCanvas);
    ctx.clearRect(0, 0, w, h);
    const steps = this.steps;
    const wrap = this.root.querySelector(".timeline-wrap");
    wrap.dataset.steps = steps.length;
    wrap.dataset.lastStep = steps.length ? steps[steps.length - 1][0] : -1;
    if (!steps.length) return;
    // row: index, duration ms, batch, prefill, decode, jump-forward, speculative, preempted
    const top = 14, bottom = h - 16, plotH = bottom - top;
    const barW = w / TIMELINE_STEPS;
    // token counts on a square-root scale: a 1,000-token prefill and a 6-token decode step both show
    const maxTokens = Math.max(1, ...steps.map((s) => s[3] + s[4] + s[5] + s[6]));
    const scale = plotH / Math.sqrt(maxTokens);
    const maxMs = Math.max(1e-3, ...steps.map((s) => s[1]));
    const maxBatch = Math.max(1, ...steps.map((s) => s[2]));
    const x0 = w - steps.length * barW;
    steps.forEach((s, i) => {
      const x = x0 + i * barW;
      let below = 0;
      for (const [v, color] of [[s[3], COLORS.prefill], [s[4], COLORS.decode], [s[5], COLORS.jump],
                                [s[6], COLORS.spec]]) {
        if (!v) continue;
        const y0 = bottom - Math.sqrt(below) * scale, y1 = bottom - Math.sqrt(below + v) * scale;
        ctx.fillStyle = color;
        ctx.fillRect(x, y1, Math.max(1, barW - 1), y0 - y1);
        below += v;
      }
      if (s[7]) { ctx.fillStyle = COLORS.evict; ctx.fillRect(x, bottom + 2, Math.max(1, barW - 1), 3); }
    });
    for (const [col, max, color] of [[1, maxMs, COLORS.steptime], [2, maxBatch, COLORS.batch]]) {
      ctx.strokeStyle = color;
      ctx.lineWidth = 1.5;
      ctx.beginPath();
      steps.forEach((s, i) => {
        const x = x0 + (i + 0.5) * barW, y = bottom - (s[col] / max) * plotH;
        if (i) ctx.lineTo(x, y); else ctx.moveTo(x, y);
      });
      ctx.stroke();
    }
    ctx.fillStyle = COLORS.batch;
    ctx.font = "11px system-ui, sans-serif";
    ctx.fillText("tokens/step (square-root scale) max " + maxTokens + " · step time max " + maxMs.toFixed(1) + " ms · batch max " +
                 maxBatch, 6, 11);
    const last = steps[steps.length - 1];
    this.root.querySelector(".step-summary").textContent = "step " + last[0] + ": " + last[2] + " rows, " +
      (last[3] + last[4] + last[5] + last[6]) + " tokens (" + last[3] + " prefill, " + last[4] + " decode, " +
      last[5] + " jump-forward), " + last[1].toFixed(1) + " ms";
  }
}

const views = [];
let frames = 0;

function render(frame) {
  frames++;
  document.body.dataset.frames = frames;
  $("model-name").textContent = frame.model;
  frame.replicas.forEach((rep, i) => {
    if (!views[i]) views[i] = new ReplicaView(i, frame.replicas.length);
    views[i].update(rep);
  });
  const t = frame.throughput;
  $("gen-tps").textContent = fmt(t.recent.generation, 1);
  $("gen-tps-minute").textContent = "tok/s (last " + t.recent_s + " s) · " + fmt(t.minute.generation, 1) +
    " over the minute";
  $("prompt-tps").textContent = fmt(t.recent.prompt, 1);
  $("prompt-tps-minute").textContent = "tok/s (last " + t.recent_s + " s) · " + fmt(t.minute.prompt, 1) +
    " over the minute";
  const L = frame.latency;
  $("ttft-p50").textContent = ms(L.ttft.p50);
  $("ttft-tail").textContent = "p50 · p90 " + ms(L.ttft.p90) + " · p99 " + ms(L.ttft.p99) + " · n " + L.ttft.n;
  $("itl-p50").textContent = ms(L.itl.p50);
  $("itl-tail").textContent = "p50 · p90 " + ms(L.itl.p90) + " · p99 " + ms(L.itl.p99) + " · n " + L.itl.n;
  const c = frame.cache;
  $("hit-rate").textContent = pct(c.hit_rate_minute);
  $("hit-rate-total").textContent = "last minute · since start " + pct(c.hit_rate_total);
  $("kv-usage").textContent = pct(c.usage);
  $("evictions").textContent = "held by requests · " + (c.evictions_total ?? "–") + " blocks evicted";
  const counts = frame.replicas.reduce((a, r) => [a[0] + r.counts.running, a[1] + r.counts.waiting,
                                                  a[2] + r.counts.preempted], [0, 0, 0]);
  $("queue-counts").textContent = counts.join(" · ");
  const costs = frame.replicas.map((r) => r.cost);
  const shares = costs.filter((x) => x.share !== null).map((x) => x.share);
  $("feed-share").textContent = shares.length ? pct(Math.max(...shares)) : "–";
  $("feed-snapshot").textContent = "of engine step time · snapshot " +
    Math.max(...costs.map((x) => x.snapshot_ms)).toFixed(2) + " ms";
  renderQueue(frame);
  renderParallel(frame.parallel);
}

function renderQueue(frame) {
  const body = document.querySelector("#queue tbody");
  const rows = [];
  for (const rep of frame.replicas) {
    for (const q of rep.queue) {
      const tr = document.createElement("tr");
      tr.dataset.status = q.status;
      const id = document.createElement("td");
      id.className = "id";
      id.textContent = (frame.replicas.length > 1 ? rep.replica + ": " : "") + q.id;
      const st = document.createElement("td");
      st.innerHTML = '<span class="status ' + q.status + '"></span>';
      st.firstChild.textContent = q.status;
      const prompt = document.createElement("td");
      const pbar = document.createElement("div");
      pbar.className = "bar";
      const cachedW = 100 * Math.min(q.cached, q.prompt) / q.prompt;
      const computedW = 100 * Math.min(q.computed, q.prompt) / q.prompt;
      pbar.innerHTML = '<i class="computed"></i><i class="cachedpart"></i>';
      pbar.children[0].style.width = computedW + "%";
      pbar.children[1].style.width = cachedW + "%";
      pbar.title = q.cached + " cached / " + Math.min(q.computed, q.prompt) + " computed / " + q.prompt;
      prompt.append(pbar);
      const out = document.createElement("td");
      const obar = document.createElement("div");
      obar.className = "bar";
      obar.innerHTML = '<i class="output"></i>';
      obar.children[0].style.width = (100 * q.output / Math.max(1, q.max)) + "%";
      obar.title = q.output + " / " + q.max + " tokens";
      out.append(obar);
      tr.append(id, st, prompt, out);
      rows.push(tr);
    }
  }
  body.replaceChildren(...rows);
}

function renderParallel(parallel) {
  $("parallel-section").hidden = !parallel.length;
  if (!parallel.length) return;
  const box = $("parallel");
  box.textContent = "";
  for (const p of parallel) {
    const div = document.createElement("div");
    const title = document.createElement("div");
    title.className = "muted";
    title.textContent = (parallel.length > 1 ? "replica " + p.replica + " · " : "") + p.num_ranks + " ranks · comm " +
      pct(p.comm_share) + " of work · bubble rate " + pct(p.bubble_rate) + " · balance " + fmt(p.balance, 2);
    const ranks = document.createElement("div");
    ranks.className = "ranks";
    p.utilisation.forEach((u, r) => {
      const rank = document.createElement("div");
      rank.className = "rank";
      rank.innerHTML = '<div class="col"><i></i></div><div></div>';
      rank.querySelector("i").style.height = Math.min(100, 100 * u) + "%";
      rank.lastChild.textContent = "rank " + r + " " + pct(u);
      ranks.append(rank);
    });
    div.append(title, ranks);
    box.append(div);
  }
}

function setConnection(text, cls) {
  const badge = $("connection");
  badge.textContent = text;
  badge.className = "badge " + (cls || "");
}

async function connect() {
  await Pagoda.ensureKey();
  for (;;) {
    try {
      const response = await Pagoda.fetch("/dashboard/stream", { headers: { Accept: "text/event-stream" } });
      if (!response.ok) throw new Error(await Pagoda.errorText(response));
      setConnection("live", "live");
      for await (const data of Pagoda.events(response)) {
        const frame = JSON.parse(data);
        if (frame.error) { setConnection("engine: " + frame.error, "down"); continue; }
        setConnection("live", "live");
        render(frame);
      }
      setConnection("stream ended; reconnecting…", "down");
    } catch (e) {
      setConnection("disconnected (" + e.message + "); retrying…", "down");
    }
    await new Promise((r) => setTimeout(r, 1000));
  }
}

window.addEventListener("resize", () => views.forEach((v) => { v.drawBlocks(); v.drawTimeline(); }));
connect();
