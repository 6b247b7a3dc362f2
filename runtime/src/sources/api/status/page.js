// certconn's status page. The token lives in this tab's sessionStorage only; every value from
// the daemon is put on the page as text (textContent), never parsed as HTML.
"use strict";

const TOKEN_KEY = "certconn-token";
const REFRESH_MS = 5000;
let timer = null;

const $ = (id) => document.getElementById(id);

function token() {
  return sessionStorage.getItem(TOKEN_KEY);
}

function signedOut(message) {
  sessionStorage.removeItem(TOKEN_KEY);
  clearTimeout(timer);
  $("status").hidden = true;
  $("sign-out").hidden = true;
  $("sign-in-panel").hidden = false;
  $("sign-in-error").textContent = message || "";
  $("token").value = "";
  $("token").focus();
}

async function api(method, path) {
  const response = await fetch(path, {
    method,
    headers: { Authorization: "Bearer " + token() },
    cache: "no-store",
    credentials: "omit",
    referrerPolicy: "no-referrer",
  });
  let body = {};
  try {
    body = await response.json();
  } catch (_) {
    body = {};
  }
  return { status: response.status, body };
}

function cell(row, text, label) {
  const td = document.createElement("td");
  td.textContent = text === undefined || text === null ? "" : String(text);
  if (label) td.dataset.label = label;
  row.appendChild(td);
  return td;
}

function fill(tableId, rows, render) {
  const body = $(tableId).querySelector("tbody");
  body.replaceChildren();
  for (const item of rows) {
    const tr = document.createElement("tr");
    render(tr, item);
    body.appendChild(tr);
  }
  if (rows.length === 0) {
    const tr = document.createElement("tr");
    const td = cell(tr, "none");
    td.colSpan = 4;
    body.appendChild(tr);
  }
}

function render(s) {
  const version = $("version");
  version.textContent = s.lifecycle ? s.lifecycle.summary : "version " + s.version;
  version.className = s.lifecycle && (s.lifecycle.stage === "deprecated" || s.lifecycle.stage === "unsupported")
    ? "warning" : "muted";
  const overall = $("overall");
  overall.textContent = s.status === "ok" ? "all well" : "needs attention";
  overall.className = "badge " + (s.status === "ok" ? "ok" : "attention");

  fill("sources", s.sources || [], (tr, src) => {
    if (src.state !== "serving") tr.className = "warning";
    cell(tr, src.name, "Source");
    cell(tr, src.state, "State");
    cell(tr, src.detail || "", "Detail");
  });

  fill("certificates", s.certificates || [], (tr, c) => {
    if (c.expired) tr.className = "bad";
    else if (c.warning) tr.className = "warning";
    cell(tr, c.name, "Certificate");
    cell(tr, c.not_after, "Expires");
    const left = c.expired ? "expired" : c.days_left + " days" + (c.warning ? " — renew soon" : "");
    cell(tr, left, "Days left");
  });

  // Shown only where certconn publishes revocation ([revocation] in its config).
  $("revocation-section").hidden = !Array.isArray(s.revocation);
  fill("revocation", s.revocation || [], (tr, ca) => {
    if (ca.publishing_error) tr.className = "bad";
    cell(tr, ca.name + " (key " + ca.key + ")", "CA");
    let crl = "CRL " + ca.crl_number + ", " + ca.revoked + " revoked, next update " + ca.next_update;
    if (ca.publishing_error) {
      crl = "publishing fails: " + ca.publishing_error + " (still served: " + crl + ")";
    }
    cell(tr, crl, "CRL");
    const responder = ca.responder_not_after ? ", responder certificate until " + ca.responder_not_after : "";
    cell(tr, ca.ocsp + responder, "OCSP");
  });

  fill("backends", s.backends || [], (tr, b) => {
    const healthy = b.healthy === true;
    if (b.state !== "serving" || !healthy) tr.className = "bad";
    cell(tr, b.backend + " (" + b.plugin + ")", "Backend");
    const breaker = b.breaker && b.breaker.state !== "closed" ? ", breaker " + b.breaker.state : "";
    cell(tr, b.state + breaker + (b.problem ? ": " + b.problem : ""), "State");
    cell(tr, (healthy ? "healthy" : "unhealthy") + (b.health ? ": " + b.health : ""), "Health");
    cell(tr, b.version || "", "Version");
  });

  const jobs = Object.entries(s.jobs || {}).map(([k, v]) => v + " " + k);
  $("jobs").textContent = jobs.length ? jobs.join(", ") : "no jobs";

  fill("attention", s.attention || [], (tr, j) => {
    tr.className = "bad";
    cell(tr, j.kind + " " + j.id + (j.backend ? " at " + j.backend : ""), "Job");
    const tries = j.attempts == null ? "" : " after " + j.attempts + " attempt(s)";
    cell(tr, j.state + tries + ", " + j.updated_at, "State");
    cell(tr, j.reason || "", "Reason");
    const td = cell(tr, "", "");
    const button = document.createElement("button");
    button.type = "button";
    button.textContent = "Retry";
    button.dataset.retry = j.id;
    button.addEventListener("click", () => retry(j.id, button));
    td.appendChild(button);
  });

  const f = s.fips || {};
  $("fips").textContent =
    "policy " + (f.policy ? "on" : "off") +
    ", FIPS module " + (f.module_built ? "built" : "not built") +
    (f.module_active ? ", active" : "") +
    (f.self_test_passed === true ? ", self-test passed" : "");
}

async function retry(id, button) {
  button.disabled = true;
  const { status, body } = await api("POST", "/v1/jobs/" + encodeURIComponent(id) + "/retry");
  const out = $("retry-result");
  if (status === 200) {
    out.textContent = "Job " + id + " queued again.";
  } else if (status === 401) {
    out.textContent = "Retrying takes the API token; the read-only token only reads.";
  } else {
    out.textContent = "Job " + id + " not retried: " + (body.error || "HTTP " + status);
  }
  button.disabled = false;
  refresh();
}

async function refresh() {
  clearTimeout(timer);
  if (!token()) return signedOut();
  try {
    const { status, body } = await api("GET", "/v1/status");
    if (status === 401) return signedOut("That token was refused.");
    if (status !== 200) {
      $("problem").textContent = "The daemon answered HTTP " + status + (body.error ? ": " + body.error : "");
    } else {
      $("problem").textContent = "";
      render(body);
      $("updated").textContent = "Updated " + new Date().toLocaleTimeString() + "; refreshes every " + REFRESH_MS / 1000 + " s.";
    }
  } catch (e) {
    $("problem").textContent = "Cannot reach the daemon: " + e.message;
  }
  $("sign-in-panel").hidden = true;
  $("status").hidden = false;
  $("sign-out").hidden = false;
  timer = setTimeout(refresh, REFRESH_MS);
}

document.addEventListener("DOMContentLoaded", () => {
  $("sign-in-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const value = $("token").value.trim();
    $("token").value = "";
    if (!value) return;
    sessionStorage.setItem(TOKEN_KEY, value);
    refresh();
  });
  $("sign-out").addEventListener("click", () => signedOut());
  if (token()) refresh();
  else signedOut();
});
