// The demo page: enqueue a ranking, then follow its events with EventSource. The browser
// resumes a broken stream by itself, sending the last entry id it saw (Last-Event-ID); the
// gateway answers from there, and ids already shown are skipped.
"use strict";

const $ = (id) => document.getElementById(id);
let source = null;

fetch("example-request.json")
  .then((answer) => answer.json())
  .then((example) => {
    $("profile").value = example.profile;
    $("products").value = JSON.stringify(example.products, null, 1);
  });

$("ranking").addEventListener("submit", async (submitted) => {
  submitted.preventDefault();
  reset();
  let products;
  try {
    products = JSON.parse($("products").value);
  } catch (problem) {
    return fail(`products: not JSON (${problem.message})`);
  }
  const body = { profile: $("profile").value, products };
  if ($("top_k").value) body.top_k = Number($("top_k").value);
  const headers = { "Content-Type": "application/json" };
  if ($("token").value) headers.Authorization = `Bearer ${$("token").value}`;
  const clicked = performance.now();
  $("rank").disabled = true;
  state("queued", "Queued…");
  let answer;
  try {
    answer = await fetch("v1/rankings", { method: "POST", headers, body: JSON.stringify(body) });
  } catch (problem) {
    return fail(`the gateway did not answer (${problem.message})`);
  }
  const reply = await answer.json().catch(() => ({}));
  if (answer.status !== 202) return fail(refusal(answer.status, reply));
  follow(reply.job_id, clicked);
});

function follow(jobId, clicked) {
  const seen = new Set();
  const since = () => `${((performance.now() - clicked) / 1000).toFixed(2)} s`;
  source = new EventSource(`v1/rankings/${encodeURIComponent(jobId)}/events`);
  source.onopen = () => { if ($("status").dataset.state === "reconnecting") state("running", "Ranking…"); };
  source.addEventListener("started", (event) => {
    const { attempt } = JSON.parse(event.data);
    state("running", attempt > 1 ? `Ranking… (attempt ${attempt})` : "Ranking…");
  });
  source.addEventListener("item", (event) => {
    if (seen.has(event.lastEventId)) return;
    seen.add(event.lastEventId);
    const item = JSON.parse(event.data);
    if ($("items").children.length === 0) $("first-item").textContent = since();
    const line = document.createElement("li");
    line.dataset.productId = item.product_id;
    line.dataset.rank = item.rank;
    line.append(item.product_name);
    if (item.source === "fallback") line.append(badge("not ranked by the LLM"));
    const at = document.createElement("span");
    at.className = "at";
    at.textContent = since();
    line.prepend(at);
    $("items").append(line);
  });
  source.addEventListener("done", (event) => {
    const done = JSON.parse(event.data);
    $("full-list").textContent = since();
    $("rejected").textContent = String(Object.values(done.rejected).reduce((a, b) => a + b, 0));
    state("done", `Done: ${done.count} recommendations.`);
    finish();
  });
  source.addEventListener("error", (event) => {
    if (event.data === undefined) {  // the connection, not the job: EventSource reconnects
      if (source.readyState === EventSource.CONNECTING) state("reconnecting", "Connection lost, resuming…");
      else fail("the event stream closed");
      return;
    }
    const error = JSON.parse(event.data);
    fail(`${error.code}: ${error.message}`);
  });
}

function badge(text) {
  const mark = document.createElement("span");
  mark.className = "fallback";
  mark.textContent = text;
  return mark;
}

function refusal(status, reply) {
  if (status === 422 && Array.isArray(reply.detail)) {
    return reply.detail.map((e) => `${e.loc.filter((p) => p !== "body").join(".")}: ${e.msg}`).join("; ");
  }
  return `${status}: ${typeof reply.detail === "string" ? reply.detail : "refused"}`;
}

function state(name, text) {
  $("status").dataset.state = name;
  $("status").textContent = text;
}

function fail(message) {
  state("error", "Failed.");
  $("error").hidden = false;
  $("error").textContent = message;
  finish();
}

function finish() {
  if (source) source.close();
  source = null;
  $("rank").disabled = false;
}

function reset() {
  finish();
  $("items").replaceChildren();
  $("error").hidden = true;
  for (const id of ["first-item", "full-list", "rejected"]) $(id).textContent = "—";
}
