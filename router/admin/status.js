// The admin status page: asks for the token once, keeps it in sessionStorage (this tab
// only, gone when it closes), sends it as "Authorization: Bearer", refreshes every 2 s.
// Everything is written with textContent: nothing from the API is parsed as HTML.
"use strict";

const TOKEN_KEY = "hostmux-admin-token";
const REFRESH_MS = 2000;
let timer = null;

function el(id) { return document.getElementById(id); }

async function api(method, path, body) {
  const token = sessionStorage.getItem(TOKEN_KEY);
  const headers = { "Authorization": "Bearer " + token };
  if (body !== undefined) headers["Content-Type"] = "application/json";
  const response = await fetch(path, {
    method, headers, body: body === undefined ? undefined : JSON.stringify(body),
    cache: "no-store", credentials: "omit",
  });
  if (response.status === 401) { askForToken("The token was refused."); throw new Error("401"); }
  const data = await response.json();
  if (!response.ok) throw new Error(data.error || response.statusText);
  return data;
}

function when(seconds) {
  return seconds ? new Date(seconds * 1000).toLocaleString() : "—";
}

function cell(row, text, number) {
  const td = row.insertCell();
  td.textContent = String(text);
  if (number) td.className = "number";
  return td;
}

function button(row, label, action) {
  const b = document.createElement("button");
  b.type = "button";
  b.textContent = label;
  b.addEventListener("click", action);
  row.insertCell().appendChild(b);
}

async function act(method, path, body) {
  try { await api(method, path, body); el("error").textContent = ""; }
  catch (error) { el("error").textContent = String(error.message || error); }
  refresh();
}

function showTunnels(tunnels) {
  const body = el("tunnels").tBodies[0];
  body.replaceChildren();
  for (const t of tunnels) {
    const row = body.insertRow();
    row.dataset.name = t.name;
    cell(row, t.name); cell(row, t.owner); cell(row, t.peer); cell(row, t.transport);
    cell(row, t.router || "—"); cell(row, when(t.since)); cell(row, t.requests, true);
    cell(row, t.bytes_in, true); cell(row, t.bytes_out, true);
    cell(row, t.websockets_open, true); cell(row, when(t.last_activity));
    cell(row, t.idle === true ? "idle" : t.idle === false ? "active" : "—");
    button(row, "kick", () => act("POST", "/api/kick", { name: t.name }));
  }
  el("summary").textContent = tunnels.length + (tunnels.length === 1 ? " tunnel" : " tunnels");
}

function showBlocks(blocks) {
  const body = el("blocks").tBodies[0];
  body.replaceChildren();
  for (const b of blocks) {
    const row = body.insertRow();
    cell(row, b.kind); cell(row, b.value); cell(row, b.reason || ""); cell(row, b.by);
    cell(row, when(b.at));
    button(row, "unblock", () => act("POST", "/api/unblock", { kind: b.kind, value: b.value }));
  }
}

async function refresh() {
  clearTimeout(timer);
  if (!sessionStorage.getItem(TOKEN_KEY)) return;
  try {
    const [tunnels, blocks] = await Promise.all([api("GET", "/api/tunnels"), api("GET", "/api/blocks")]);
    showTunnels(tunnels.tunnels);
    showBlocks(blocks.blocks);
    el("updated").textContent = "(updated " + new Date().toLocaleTimeString() + ")";
    el("error").textContent = "";
  } catch (error) {
    if (error.message === "401") return;
    el("error").textContent = String(error.message || error);
  }
  timer = setTimeout(refresh, REFRESH_MS);
}

function askForToken(message) {
  clearTimeout(timer);
  sessionStorage.removeItem(TOKEN_KEY);
  el("status").hidden = true;
  el("login").hidden = false;
  el("login-error").textContent = message || "";
  el("token").focus();
}

document.addEventListener("DOMContentLoaded", () => {
  el("login").addEventListener("submit", (event) => {
    event.preventDefault();
    sessionStorage.setItem(TOKEN_KEY, el("token").value.trim());
    el("token").value = "";
    el("login").hidden = true;
    el("status").hidden = false;
    refresh();
  });
  el("forget").addEventListener("click", () => askForToken(""));
  el("block-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const block = { kind: el("block-kind").value, value: el("block-value").value.trim(),
                    reason: el("block-reason").value.trim() };
    el("block-value").value = "";
    el("block-reason").value = "";
    act("POST", "/api/block", block);
  });
  el("drain").addEventListener("click", () => {
    if (confirm("Drain: stop accepting and close every tunnel (the process stays up)?")) {
      act("POST", "/api/drain", {});
    }
  });
  if (sessionStorage.getItem(TOKEN_KEY)) { el("status").hidden = false; refresh(); }
  else askForToken("");
});
