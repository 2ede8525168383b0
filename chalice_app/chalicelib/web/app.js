// The try-it page: choose or drop a photo, see it, see the live model's answer.
// All API calls go through client.js, the same module docs/clients.md shows.
import { classify } from "./client.js";

const STORE = { base: "breedline.baseUrl", key: "breedline.apiKey", resize: "breedline.resize" };
const $ = (id) => document.getElementById(id);

/** The API base URL: what the person saved, else the API that served this page (its URL minus /try). */
export function defaultBaseUrl(location = window.location) {
  const path = location.pathname.replace(/\/try\/?$/, "");
  return `${location.origin}${path}`;
}

function settings() {
  return {
    baseUrl: localStorage.getItem(STORE.base) || defaultBaseUrl(),
    apiKey: localStorage.getItem(STORE.key) || "",
    resize: localStorage.getItem(STORE.resize) !== "false",
  };
}

function showError(message) {
  const box = $("error");
  box.textContent = message;
  box.hidden = false;
}

function showAnswer(answer, file) {
  const { body } = answer;
  $("result").hidden = false;
  const label = $("label");
  const verdict = $("verdict");
  if (body.abstained) {
    label.textContent = "I don't know";
    label.className = "unknown";
    verdict.textContent = body.reason === "out_of_distribution"
      ? "This does not look like anything the model was trained on."
      : "The model is not confident enough to answer. Its best guesses are below.";
  } else {
    label.textContent = body.label;
    label.className = "";
    verdict.textContent = `probability ${(body.probability * 100).toFixed(1)}%`;
  }
  const bars = $("bars");
  bars.replaceChildren(...(body.top_k || []).map((item) => {
    const row = document.createElement("li");
    const name = document.createElement("span");
    name.textContent = item.label;
    const bar = document.createElement("span");
    bar.className = "bar";
    bar.style.width = `${Math.max(1, item.probability * 100)}%`;
    const value = document.createElement("span");
    value.textContent = `${(item.probability * 100).toFixed(1)}%`;
    row.append(name, bar, value);
    return row;
  }));
  const kb = (bytes) => `${(bytes / 1024).toFixed(0)} KB`;
  $("meta").textContent = `model ${body.model} · sent ${kb(answer.sentBytes)} of ${kb(file.size)}` +
    `${answer.resized ? " (resized in the browser)" : ""} · ${answer.elapsedMs.toFixed(0)} ms`;
}

export async function handleFile(file) {
  $("error").hidden = true;
  if (!file) return null;
  const preview = $("preview");
  if (preview.src) URL.revokeObjectURL(preview.src);
  preview.src = URL.createObjectURL(file);
  $("result").hidden = true;
  const options = settings();
  let answer;
  try {
    answer = await classify(file, { ...options, resize: options.resize });
  } catch (error) {
    showError(`The API could not be reached at ${options.baseUrl} (${error.message}). Check the API base URL in the settings.`);
    return null;
  }
  if (!answer.ok) {
    $("result").hidden = false;
    $("label").textContent = "";
    $("verdict").textContent = "";
    $("bars").replaceChildren();
    $("meta").textContent = "";
    showError(`${answer.body.message || "The API refused the image"} (HTTP ${answer.status}, ${answer.body.code || "error"})`);
  } else {
    showAnswer(answer, file);
  }
  document.body.dataset.state = answer.ok ? "answered" : "error";
  return answer;
}

function wire() {
  const current = settings();
  $("base-url").value = current.baseUrl;
  $("api-key").value = current.apiKey;
  $("resize").checked = current.resize;
  $("settings-form").addEventListener("submit", (event) => {
    event.preventDefault();
    localStorage.setItem(STORE.base, $("base-url").value.trim());
    localStorage.setItem(STORE.key, $("api-key").value.trim());
    localStorage.setItem(STORE.resize, String($("resize").checked));
    $("saved").hidden = false;
  });
  $("file").addEventListener("change", (event) => handleFile(event.target.files[0]));
  const drop = $("drop");
  for (const type of ["dragenter", "dragover"]) {
    drop.addEventListener(type, (event) => { event.preventDefault(); drop.classList.add("over"); });
  }
  for (const type of ["dragleave", "drop"]) {
    drop.addEventListener(type, () => drop.classList.remove("over"));
  }
  drop.addEventListener("drop", (event) => {
    event.preventDefault();
    handleFile(event.dataTransfer.files[0]);
  });
  document.body.dataset.state = "ready";
}

wire();
