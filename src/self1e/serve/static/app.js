// The self1e web page: pick or upload an image, segment expressions, chat. Plain JS, talks only to
// this server's JSON API (/v1/info, /v1/examples, /v1/segment, /v1/chat).
"use strict";

const $ = (id) => document.getElementById(id);
const state = {image: null, result: null, view: "overlay", history: [], info: null, rleUrl: null};
const CHAT_TOKENS = 64;

function el(tag, props = {}, ...children) {
  const node = Object.assign(document.createElement(tag), props);
  for (const c of children) node.append(c);
  return node;
}

function showError(message) {
  const box = $("error");
  box.textContent = message;
  box.hidden = false;
}

function clearError() {
  $("error").hidden = true;
  $("error").textContent = "";
}

// fetch JSON; a failure becomes an Error whose message a person can read (the server's own words).
async function api(path, body) {
  const init = body === undefined ? {} :
    {method: "POST", headers: {"content-type": "application/json"}, body: JSON.stringify(body)};
  let response;
  try {
    response = await fetch(path, init);
  } catch (e) {
    throw new Error(`Could not reach the server (${e.message}). Is it still running?`);
  }
  const text = await response.text();
  let data = null;
  try { data = JSON.parse(text); } catch (e) { /* not JSON: handled below */ }
  if (!response.ok) {
    const message = data && data.error && data.error.message;
    if (message) throw new Error(`${message} (HTTP ${response.status})`);
    throw new Error(`The server answered HTTP ${response.status} ${response.statusText}` +
                    (text ? `: ${text.slice(0, 200)}` : ""));
  }
  if (data === null) throw new Error("The server's answer was not JSON.");
  return data;
}

// Run fn with every action button disabled and `button` saying what is going on.
async function busy(button, label, fn) {
  const buttons = [$("segment-btn"), $("chat-btn")];
  const old = button.textContent;
  buttons.forEach((b) => { b.disabled = true; });
  button.textContent = label;
  button.setAttribute("aria-busy", "true");
  document.body.classList.add("busy");
  try {
    await fn();
  } catch (e) {
    showError(e.message || String(e));
  } finally {
    buttons.forEach((b) => { b.disabled = false; });
    button.textContent = old;
    button.removeAttribute("aria-busy");
    document.body.classList.remove("busy");
  }
}

const words = (n) => n.toLocaleString("en");
const megabytes = (n) => `${(n / 1048576).toFixed(n % 1048576 ? 1 : 0)} MB`;
const megapixels = (n) => `${(n / 1e6).toFixed(1).replace(/\.0$/, "")} megapixels`;

async function loadInfo() {
  const note = $("model-note");
  try {
    const info = state.info = await api("/v1/info");
    const m = info.model;
    note.replaceChildren(el("p", {}, el("strong", {textContent: `Model: ${m.name}. `}), m.note || ""));
    if (m.domain) {
      const vocab = el("dl", {className: "vocab"});
      for (const [key, label] of [["shapes", "Shapes"], ["colours", "Colours"], ["sizes", "Sizes"]]) {
        if (m[key]) vocab.append(el("dt", {textContent: label}), el("dd", {textContent: m[key].join(", ")}));
      }
      note.append(vocab);
    }
    const l = info.limits;
    $("limits").textContent = `Limits: images up to ${megabytes(l.max_upload_bytes)} and ` +
      `${megapixels(l.max_pixels)}; images over ${megapixels(l.model_pixels)} are shrunk for the model and ` +
      `their masks come back at full size. Up to ${l.max_texts} expressions per request, each at most ` +
      `${words(l.max_text_chars)} characters. A conversation keeps at most ${info.max_history_turns} turns.`;
  } catch (e) {
    note.textContent = `Could not load the model's description: ${e.message}`;
  }
}

function chips(box, items, onPick) {
  box.replaceChildren(...items.map((text) => {
    const chip = el("button", {type: "button", className: "chip", textContent: text});
    chip.addEventListener("click", () => onPick(text));
    return chip;
  }));
}

function addExpression(text) {
  const area = $("expressions");
  const lines = area.value.split("\n").map((s) => s.trim()).filter(Boolean);
  if (!lines.includes(text)) lines.push(text);
  area.value = lines.join("\n");
  area.focus();
}

function useQuestion(text) {
  $("chat-input").value = text;
  $("chat-input").focus();
}

async function loadGallery() {
  const gallery = $("gallery");
  let examples;
  try {
    examples = await api("/v1/examples");
  } catch (e) {
    gallery.replaceChildren(el("p", {className: "muted", textContent: `No examples: ${e.message}`}));
    return;
  }
  if (!examples.length) {
    gallery.replaceChildren(el("p", {className: "muted", textContent: "This server has no example images."}));
    return;
  }
  gallery.replaceChildren(...examples.map((ex, i) => {
    const item = el("button", {type: "button", className: "example", title: ex.expressions.join("\n")},
      el("img", {src: ex.image, alt: `Example ${i + 1}: ${ex.expressions[0] || "a scene"}`, loading: "lazy"}));
    item.addEventListener("click", () => pickExample(ex, item));
    return item;
  }));
}

async function pickExample(ex, item) {
  clearError();
  try {
    const response = await fetch(ex.image);
    if (!response.ok) throw new Error(`HTTP ${response.status}`);
    setImage(await readAsDataURL(await response.blob()), ex.image.split("/").pop());
  } catch (e) {
    showError(`Could not load the example ${ex.image}: ${e.message}`);
    return;
  }
  document.querySelectorAll("#gallery .example").forEach((b) => b.setAttribute("aria-pressed", String(b === item)));
  chips($("expression-chips"), ex.expressions || [], addExpression);
  chips($("question-chips"), ex.questions || [], useQuestion);
}

function readAsDataURL(blob) {
  return new Promise((resolve, reject) => {
    const reader = new FileReader();
    reader.onload = () => resolve(reader.result);
    reader.onerror = () => reject(reader.error || new Error("the file could not be read"));
    reader.readAsDataURL(blob);
  });
}

async function pickFile(file) {
  clearError();
  if (!file) return;
  const limit = state.info && state.info.limits.max_upload_bytes;
  if (limit && file.size > limit) {
    showError(`${file.name} is ${megabytes(file.size)}; this server takes images up to ${megabytes(limit)}.`);
    return;
  }
  try {
    setImage(await readAsDataURL(file), file.name);
  } catch (e) {
    showError(`Could not read ${file.name}: ${e.message}`);
    return;
  }
  document.querySelectorAll("#gallery .example").forEach((b) => b.setAttribute("aria-pressed", "false"));
  chips($("expression-chips"), [], addExpression);
  chips($("question-chips"), [], useQuestion);
}

// A new current image: old results and the conversation no longer apply.
function setImage(dataUrl, name) {
  state.image = dataUrl;
  state.name = name;
  showResult(null);
  newConversation();
  const img = $("result-img");
  img.onerror = () => {
    $("caption").textContent = `${name}: the browser cannot show this file (the server will say if it can read it).`;
  };
  img.src = dataUrl;
  img.alt = `The current image, ${name}`;
  img.hidden = false;
  $("caption").textContent = name;
}

// Show a segment or chat response (null: just the image), with its legend and downloads.
function showResult(result) {
  state.result = result;
  const legend = $("legend");
  const rle = $("download-rle");
  legend.replaceChildren();
  if (state.rleUrl) URL.revokeObjectURL(state.rleUrl);
  state.rleUrl = null;
  rle.hidden = true;
  $("view-toggle").disabled = !result;
  if (!result) return;
  setView(state.view);
  if (!result.results.length) {
    legend.append(el("li", {className: "muted", textContent: "No [SEG] in this answer, so no mask."}));
    return;
  }
  result.results.forEach((r, i) => {
    const swatch = el("span", {className: "swatch", title: r.colour});
    swatch.style.backgroundColor = r.colour;
    const detail = r.empty ? "no target (empty mask)" : `${words(r.pixels)} pixels`;
    const link = el("a", {href: r.mask_png, download: `mask-${i + 1}-${slug(r.text)}.png`, textContent: "mask PNG",
                          className: "mask-link"});
    link.setAttribute("aria-label", `Download the mask of “${r.text}” as PNG`);
    legend.append(el("li", {className: "legend-item" + (r.empty ? " empty" : "")}, swatch,
      el("span", {className: "text", textContent: r.text}),
      el("span", {className: "meta", textContent: `score ${r.score.toFixed(3)} · ${detail}`}), link));
  });
  const coco = {width: result.width, height: result.height,
                annotations: result.results.map((r) => ({text: r.text, segmentation: r.rle, bbox: r.bbox,
                                                         score: r.score}))};
  state.rleUrl = URL.createObjectURL(new Blob([JSON.stringify(coco, null, 1)], {type: "application/json"}));
  rle.href = state.rleUrl;
  rle.download = `${slug(state.name || "image")}-masks.json`;
  rle.hidden = false;
}

const slug = (text) => text.toLowerCase().replace(/[^a-z0-9]+/g, "-").replace(/^-|-$/g, "").slice(0, 40) || "mask";

function setView(view) {
  state.view = view;
  const toggle = $("view-toggle");
  toggle.setAttribute("aria-pressed", String(view === "masks"));
  toggle.textContent = view === "masks" ? "Show the overlay" : "Show masks only";
  if (state.result) {
    const img = $("result-img");
    img.src = view === "masks" ? state.result.mask_view : state.result.overlay;
    img.alt = `${view === "masks" ? "Masks only" : "Masks over the image"}: ` +
      state.result.results.map((r) => r.text).join("; ");
  }
}

async function segment() {
  clearError();
  if (!state.image) return showError("Pick an example or upload an image first.");
  const texts = $("expressions").value.split("\n").map((s) => s.trim()).filter(Boolean);
  if (!texts.length) return showError("Write at least one expression, one per line (or click an example chip).");
  await busy($("segment-btn"), "Segmenting…", async () => {
    showResult(await api("/v1/segment", {image: state.image, texts, render: true}));
  });
}

function turn(role, ...content) {
  const item = el("li", {className: `turn ${role}`}, el("span", {className: "who", textContent: role === "user" ?
    "You" : "Model"}), el("span", {className: "said"}, ...content));
  $("chat-log").append(item);
  item.scrollIntoView({block: "nearest"});
  return item;
}

// The answer with each [SEG] shown as a swatch in its mask's colour.
function answerNodes(answer, results) {
  const parts = answer.split("[SEG]");
  const nodes = [parts[0]];
  parts.slice(1).forEach((part, i) => {
    const swatch = el("span", {className: "swatch inline", textContent: "[SEG]"});
    if (results[i] && results[i].colour) swatch.style.backgroundColor = results[i].colour;
    nodes.push(swatch, part);
  });
  return nodes;
}

async function chat(event) {
  event.preventDefault();
  clearError();
  const input = $("chat-input");
  const message = input.value.trim();
  if (!state.image) return showError("Pick an example or upload an image first.");
  if (!message) return showError("Write a message first (or click an example question).");
  $("chat-log").querySelector(".placeholder")?.remove();
  const mine = turn("user", message);
  input.value = "";
  await busy($("chat-btn"), "Thinking…", async () => {
    try {
      const body = await api("/v1/chat", {image: state.image, message, history: state.history, render: true,
                                          max_new_tokens: CHAT_TOKENS});
      state.history = body.history;
      turn("model", ...answerNodes(body.answer || "(an empty answer)", body.results));
      showResult(body);
    } catch (e) {
      mine.remove();
      input.value = message;
      throw e;
    }
  });
}

function newConversation() {
  state.history = [];
  $("chat-log").replaceChildren(el("li", {className: "placeholder muted", textContent:
    "No conversation yet. Ask about the current image; answers with [SEG] draw masks."}));
}

function setupDrop() {
  const drop = $("drop");
  for (const name of ["dragenter", "dragover"]) {
    drop.addEventListener(name, (e) => { e.preventDefault(); drop.classList.add("over"); });
  }
  for (const name of ["dragleave", "drop"]) drop.addEventListener(name, () => drop.classList.remove("over"));
  drop.addEventListener("drop", (e) => {
    e.preventDefault();
    pickFile(e.dataTransfer.files[0]);
  });
  drop.addEventListener("keydown", (e) => {
    if (e.key === "Enter" || e.key === " ") { e.preventDefault(); $("file-input").click(); }
  });
  $("file-input").addEventListener("change", (e) => { pickFile(e.target.files[0]); e.target.value = ""; });
}

$("segment-btn").addEventListener("click", segment);
$("chat-form").addEventListener("submit", chat);
$("chat-reset").addEventListener("click", () => { clearError(); newConversation(); });
$("view-toggle").addEventListener("click", () => setView(state.view === "masks" ? "overlay" : "masks"));
$("expressions").addEventListener("keydown", (e) => {
  if (e.key === "Enter" && (e.ctrlKey || e.metaKey)) segment();
});
setupDrop();
newConversation();
loadInfo();
loadGallery();
