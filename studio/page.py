"""The studio's one page: inline CSS and script (the script runs only with the response's nonce), nothing
loaded from anywhere else. The emails are shown in sandboxed ``srcdoc`` frames: they run no script, reach
no other origin and navigate nowhere."""

from __future__ import annotations

_STYLE = """
*{box-sizing:border-box}
body{margin:0;font:14px/1.45 system-ui,-apple-system,Segoe UI,Helvetica,Arial,sans-serif;color:#18181b;
  background:#f4f4f5}
header{display:flex;gap:12px;align-items:center;padding:10px 18px;background:#18181b;color:#fff}
header h1{font-size:16px;margin:0;font-weight:600}
#live{margin-left:auto;font-size:12px;padding:2px 8px;border-radius:10px;background:#3f3f46}
#live.on{background:#15803d}
main{display:grid;grid-template-columns:300px 1fr;min-height:calc(100vh - 44px)}
nav{background:#fff;border-right:1px solid #e4e4e7;padding:8px 0;overflow:auto}
nav h2{font-size:12px;text-transform:uppercase;letter-spacing:.04em;color:#71717a;margin:12px 16px 4px}
nav button{display:block;width:100%;text-align:left;border:0;background:none;padding:7px 16px;
  font:inherit;cursor:pointer;color:inherit}
nav button:hover{background:#f4f4f5}
nav button[aria-current=true]{background:#e0e7ff;font-weight:600}
nav small{display:block;color:#71717a;font-weight:400}
section{padding:16px 20px;min-width:0}
.facts{display:grid;grid-template-columns:repeat(auto-fill,minmax(180px,1fr));gap:8px 16px;
  background:#fff;border:1px solid #e4e4e7;border-radius:8px;padding:12px 14px}
.facts dt{font-size:12px;color:#71717a}.facts dd{margin:0;overflow-wrap:anywhere}
.bar{display:flex;flex-wrap:wrap;gap:10px;align-items:center;margin:12px 0}
select{max-width:100%}
select,button.act{font:inherit;padding:6px 10px;border:1px solid #d4d4d8;border-radius:6px;background:#fff}
button.act{background:#18181b;color:#fff;border-color:#18181b;cursor:pointer}
#problems{background:#fef2f2;border:1px solid #fecaca;border-radius:8px;padding:10px 14px;margin:12px 0}
#problems[hidden]{display:none}
#problems li{margin:4px 0}#problems code{font-weight:600}
#problems .fix{color:#52525b}
#stale{background:#fffbeb;border:1px solid #fde68a;border-radius:6px;padding:6px 10px}
.frames{display:flex;flex-wrap:wrap;gap:16px;align-items:flex-start}
.frame{background:#fff;border:1px solid #e4e4e7;border-radius:8px;padding:8px;max-width:100%;overflow:auto}
.frame h3,.textpart h3{margin:0 0 6px;font-size:12px;color:#71717a;font-weight:600}
#desktop{width:1280px;height:760px;border:0;transform-origin:0 0}
.desktop-box{width:min(100%,900px);height:560px;overflow:hidden}
.desktop-box #desktop{transform:scale(.68)}
#mobile{width:375px;height:700px;border:0}
.textpart{background:#fff;border:1px solid #e4e4e7;border-radius:8px;padding:8px 12px;margin-top:16px}
#text{white-space:pre-wrap;font:13px/1.5 ui-monospace,Menlo,Consolas,monospace;margin:0}
@media (max-width:700px){body{overflow-x:hidden}.bar label{display:flex;gap:6px;width:100%}
  .bar select{flex:1;min-width:0}main{grid-template-columns:minmax(0,1fr)}nav{max-height:30vh;border-right:0;
  border-bottom:1px solid #e4e4e7}section{padding:12px}.facts{grid-template-columns:1fr 1fr}
  .frame.desk{display:none}.frame{padding:4px}#mobile{width:100%}}
"""

_SCRIPT = r"""
"use strict";
const token = new URLSearchParams(location.search).get("token");
const state = {scheme: null, segment: null, member: 0, catalog: null, seq: 0};
const $ = (id) => document.getElementById(id);
function url(path, params) {
  const q = new URLSearchParams(params || {});
  if (token) q.set("token", token);
  return path + "?" + q.toString();
}
async function getJSON(path, params) {
  const r = await fetch(url(path, params), {headers: token ? {"X-Studio-Token": token} : {}});
  return r.json();
}
function el(tag, attrs, text) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, v);
  if (text !== undefined) e.textContent = text;
  return e;
}
function segmentInfo() {
  const s = state.catalog.schemes.find((x) => x.name === state.scheme);
  return [s, s && s.segments.find((x) => x.name === state.segment)];
}
function drawNav() {
  const nav = $("segments");
  nav.replaceChildren();
  for (const s of state.catalog.schemes) {
    nav.append(el("h2", {}, s.name + (s.as_of ? " · " + s.as_of : " · no snapshot")));
    for (const seg of s.segments) {
      const b = el("button", {"data-scheme": s.name, "data-segment": seg.name,
        "aria-current": String(s.name === state.scheme && seg.name === state.segment)});
      b.append(document.createTextNode(seg.name));
      b.append(el("small", {}, seg.size.toLocaleString() + " customers · " +
        (seg.suppressed ? "suppressed" : (seg.offer || ""))));
      b.addEventListener("click", () => choose(s.name, seg.name, 0));
      nav.append(b);
    }
  }
}
function drawFacts(p) {
  const [s, seg] = segmentInfo();
  const e = p.email || {};
  const facts = [["Segment", state.segment], ["Customers", seg ? seg.size.toLocaleString() : ""],
    ["Snapshot", s && s.as_of ? s.as_of : "none yet"], ["Template", p.template],
    ["Offer", seg ? seg.offer : ""], ["Holdout", seg ? seg.holdout : ""],
    ["Destinations", seg ? (seg.destinations || []).join(", ") : ""], ["Subject", e.subject || ""],
    ["Preheader", e.preheader || ""], ["Coupon", e.coupon_code || "none"],
    ["Expires", e.expires_on || "—"]];
  const dl = $("facts");
  dl.replaceChildren();
  for (const [k, v] of facts) {
    const box = el("div");
    box.append(el("dt", {}, k), el("dd", {id: "fact-" + k.toLowerCase()}, v));
    dl.append(box);
  }
}
function drawProblems(p) {
  const list = $("problem-list");
  list.replaceChildren();
  const all = (p.error ? [p.error] : []).concat(p.problems || []);
  const seen = new Set();
  for (const x of all) {
    const k = x.where + x.message;
    if (seen.has(k)) continue;
    seen.add(k);
    const li = el("li");
    li.append(el("code", {}, x.where), document.createTextNode(": " + x.message + " "));
    if (x.fix) li.append(el("span", {"class": "fix"}, "fix: " + x.fix));
    list.append(li);
  }
  $("problems").hidden = seen.size === 0;
  $("stale").hidden = !p.stale;
}
function drawEmail(p) {
  const e = p.email;
  const sel = $("member");
  sel.replaceChildren(...p.members.map((m, i) => el("option", {value: String(i)}, m)));
  sel.value = String(p.member);
  $("desktop").srcdoc = e ? e.html : "";
  $("mobile").srcdoc = e ? e.html : "";
  $("text").textContent = p.suppressed ? "This segment is suppressed: no email is sent." : (e ? e.text : "");
  $("send").disabled = !e || p.error !== null;
  document.body.dataset.version = String(p.version);
}
async function show() {
  if (!state.segment) return;
  const seq = ++state.seq;  // a slower answer for an earlier choice must not overwrite this one
  const p = await getJSON("/api/preview", {scheme: state.scheme, segment: state.segment,
    member: state.member});
  if (seq !== state.seq) return;
  if (p.error && !p.members) { $("sent").textContent = p.error; return; }
  drawFacts(p); drawProblems(p); drawEmail(p);
}
async function reload() {
  state.catalog = await getJSON("/api/catalog");
  if (!state.scheme) {
    const s = state.catalog.schemes[0];
    state.scheme = s.name;
    state.segment = (s.segments.find((x) => !x.suppressed) || s.segments[0] || {}).name;
  }
  drawNav();
  await show();
}
function choose(scheme, segment, member) {
  Object.assign(state, {scheme, segment, member});
  $("sent").textContent = "";
  drawNav();
  show();
}
$("member").addEventListener("change", (ev) => { state.member = Number(ev.target.value); show(); });
$("send").addEventListener("click", async () => {
  const headers = {"Content-Type": "application/json"};
  if (token) headers["X-Studio-Token"] = token;
  const r = await fetch(url("/api/send-test"), {method: "POST", headers,
    body: JSON.stringify({scheme: state.scheme, segment: state.segment, member: state.member})});
  const body = await r.json();
  $("sent").textContent = r.ok ? "Written to the outbox: " + body.path : "Not sent: " + body.error;
});
const events = new EventSource(url("/api/events"));
events.addEventListener("change", () => reload());
events.addEventListener("open", () => { $("live").textContent = "live"; $("live").className = "on"; });
events.addEventListener("error", () => { $("live").textContent = "reconnecting"; $("live").className = ""; });
"""

_BODY = """<header><h1>Email studio</h1><span id="live">connecting</span></header>
<main><nav id="segments" aria-label="Segments"></nav>
<section>
<dl class="facts" id="facts"></dl>
<div id="problems" hidden><strong>templates check</strong><ul id="problem-list"></ul>
<p id="stale" hidden>The emails below are the last good render; they update when the problem is fixed.</p></div>
<div class="bar"><label>Member <select id="member"></select></label>
<button class="act" id="send" type="button">Send a test to the outbox</button><span id="sent"></span></div>
<div class="frames">
<div class="frame desk"><h3>Desktop · 1280 px</h3><div class="desktop-box">
<iframe id="desktop" title="Desktop preview" sandbox=""></iframe></div></div>
<div class="frame"><h3>Mobile · 375 px</h3><iframe id="mobile" title="Mobile preview" sandbox=""></iframe></div>
</div>
<div class="textpart"><h3>Text part</h3><pre id="text"></pre></div>
</section></main>"""


def page(nonce: str) -> str:
    """The page, its style and script carrying ``nonce`` (the one the response's CSP allows)."""
    return (
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>Email studio</title><style>{_STYLE}</style></head><body>{_BODY}"
        f'<script nonce="{nonce}">{_SCRIPT}</script></body></html>'
    )
