// The console's behaviour: predict one patient, upload a CSV, activate or roll back.
// The admin token is asked for each action and sent once in the Authorization header;
// it is never stored (no cookie, no storage, the field is emptied after use).
"use strict";

const model = document.body.dataset.model;
// This page's model: predictions go to its own paths, not to /predict's default name.
const modelPath = `/models/${encodeURIComponent(model)}`;

document.getElementById("model-select").addEventListener("change", (event) => {
  event.target.form.submit();
});

function show(id, text, ok) {
  const out = document.getElementById(id);
  out.textContent = text;
  out.className = ok ? "ok" : "error";
}

async function errorText(response) {
  try {
    const body = await response.json();
    return `${response.status}: ${body.error.message}`;
  } catch (e) {
    return `HTTP ${response.status}`;
  }
}

document.getElementById("predict-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  const record = {};
  for (const [key, value] of new FormData(event.target)) record[key] = Number(value);
  const response = await fetch(`${modelPath}/predict`, {
    method: "POST",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify(record),
  });
  if (!response.ok) return show("predict-result", await errorText(response), false);
  const answer = await response.json();
  const prediction = answer.predictions[0];
  const shares = Object.entries(prediction.probabilities)
    .map(([c, p]) => `${c} ${(100 * p).toFixed(1)} %`)
    .join(", ");
  show(
    "predict-result",
    `${prediction.label} (p=${prediction.probability.toFixed(3)}; ${shares}) by v${answer.model.version}`,
    true
  );
});

document.getElementById("batch-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  const response = await fetch(`${modelPath}/batch-predict`, { method: "POST", body: new FormData(event.target) });
  if (!response.ok) return show("batch-result", await errorText(response), false);
  const blob = await response.blob();
  const out = document.getElementById("batch-result");
  out.textContent = "";
  out.className = "ok";
  const link = document.createElement("a");
  link.id = "batch-download";
  link.href = URL.createObjectURL(blob);
  link.download = "predicciones.csv";
  link.textContent = `Download the predictions (${blob.size} bytes, job ${response.headers.get("X-Job-Id")})`;
  out.appendChild(link);
});

function askToken(question) {
  const dialog = document.getElementById("token-dialog");
  const input = document.getElementById("token-input");
  document.getElementById("token-question").textContent = question;
  input.value = "";
  return new Promise((resolve) => {
    dialog.addEventListener(
      "close",
      () => {
        const token = dialog.returnValue === "ok" ? input.value : null;
        input.value = "";
        resolve(token);
      },
      { once: true }
    );
    dialog.showModal();
  });
}

async function admin(action, version) {
  const what = action === "activate" ? `activate v${version}` : "roll back";
  const token = await askToken(`Admin token to ${what} ${model}`);
  if (token === null) return;
  const body = action === "activate" ? { name: model, version: Number(version), reason: "console" } : { name: model, reason: "console" };
  const headers = { "Content-Type": "application/json" };
  if (token) headers.Authorization = `Bearer ${token}`;
  const response = await fetch(`/models/${action}`, { method: "POST", headers, body: JSON.stringify(body) });
  if (!response.ok) return show("admin-result", `refused: ${await errorText(response)}`, false);
  const state = await response.json();
  show("admin-result", `active version now v${state.active_version}; reloading…`, true);
  setTimeout(() => window.location.reload(), 800);
}

for (const button of document.querySelectorAll("button.admin")) {
  button.addEventListener("click", () => admin(button.dataset.action, button.dataset.version));
}
document.body.dataset.ready = "true"; // lets tests and scripts know the handlers are attached
