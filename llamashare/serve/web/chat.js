// The chat page of `llamashare serve`: the served models and their live requests (polled from
// /llamashare/status), and a chat through the server's own OpenAI API (/v1/chat/completions,
// streamed). Text from the model goes into the page as text, never as markup.
"use strict";

const $ = (id) => document.getElementById(id);
const messages = [];
let running = null; // the AbortController of the reply being streamed

function headers() {
  const h = { "Content-Type": "application/json" };
  const key = $("key").value.trim();
  if (key) h.Authorization = "Bearer " + key;
  return h;
}

function problem(text) {
  $("problem").textContent = text || "";
}

async function getJSON(path) {
  const r = await fetch(path, { headers: headers() });
  const body = await r.json();
  if (!r.ok) throw new Error(body.error && body.error.message ? body.error.message : r.statusText);
  return body;
}

function cell(row, text) {
  const td = document.createElement("td");
  td.textContent = String(text);
  row.appendChild(td);
}

async function refresh() {
  try {
    const status = await getJSON("/llamashare/status");
    const tbody = $("status");
    tbody.replaceChildren();
    const select = $("model");
    for (const m of status.models) {
      const row = document.createElement("tr");
      row.dataset.model = m.id;
      for (const value of [m.id, m.loaded ? "yes" : "no", m.running, m.waiting, m.steps]) cell(row, value);
      tbody.appendChild(row);
      if (![...select.options].some((o) => o.value === m.id)) select.add(new Option(m.id, m.id));
    }
    if (!running) problem("");
  } catch (e) {
    problem("status: " + e.message);
  }
}

function say(role, text) {
  const li = document.createElement("li");
  li.className = role;
  li.textContent = text;
  $("transcript").appendChild(li);
  return li;
}

async function send(event) {
  event.preventDefault();
  const text = $("message").value;
  if (!text.trim() || running) return;
  $("message").value = "";
  messages.push({ role: "user", content: text });
  say("user", text);
  const reply = say("assistant", "");
  running = new AbortController();
  $("send").disabled = true;
  $("stop").disabled = false;
  let answer = "";
  try {
    const r = await fetch("/v1/chat/completions", {
      method: "POST",
      headers: headers(),
      body: JSON.stringify({ model: $("model").value, messages, stream: true, max_tokens: 256 }),
      signal: running.signal,
    });
    if (!r.ok) {
      const body = await r.json();
      throw new Error(body.error ? body.error.message : r.statusText);
    }
    const reader = r.body.getReader();
    const decoder = new TextDecoder();
    let pending = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      pending += decoder.decode(value, { stream: true });
      let cut;
      while ((cut = pending.indexOf("\n\n")) >= 0) {
        const line = pending.slice(0, cut).trim();
        pending = pending.slice(cut + 2);
        if (!line.startsWith("data: ") || line === "data: [DONE]") continue;
        const chunk = JSON.parse(line.slice(6));
        if (chunk.error) throw new Error(chunk.error.message);
        const delta = chunk.choices && chunk.choices[0] && chunk.choices[0].delta;
        if (delta && delta.content) {
          answer += delta.content;
          reply.textContent = answer;
        }
      }
    }
    reply.dataset.done = "yes";
  } catch (e) {
    if (e.name !== "AbortError") problem("chat: " + e.message);
    reply.dataset.done = "stopped";
  } finally {
    messages.push({ role: "assistant", content: answer });
    running = null;
    $("send").disabled = false;
    $("stop").disabled = true;
  }
}

$("ask").addEventListener("submit", send);
$("stop").addEventListener("click", () => running && running.abort());
refresh();
setInterval(refresh, 1000);
