// The Infernet console's only script (the Content-Security-Policy allows no inline script).
// Live regions over SSE, the playground's token stream, copy buttons, confirmations, keyboard shortcuts.
"use strict";

(function () {
  const csrf = () => (document.querySelector('meta[name="csrf-token"]') || {}).content || "";

  // -- live regions: <div data-live="/console/live/..."> gets its inner HTML replaced by "fragment" events.
  function live(el) {
    const source = new EventSource(el.dataset.live);
    el.setAttribute("aria-busy", "false");
    source.addEventListener("fragment", (e) => {
      // The fragment is rendered (and escaped) by the server's templates.
      el.innerHTML = e.data;
      el.dataset.updated = String(Date.now());
      bind(el);
    });
    source.addEventListener("end", () => source.close());
    source.addEventListener("signed-out", () => { source.close(); window.location.assign("/console/login?expired=1"); });
    // A stream the server refused (e.g. 401 after the key was revoked while the stream was reconnecting) is not
    // retried by the browser: find out why, and say so.
    source.addEventListener("error", async () => {
      if (source.readyState !== EventSource.CLOSED) return;  // the browser reconnects by itself
      try {
        const probe = await fetch(el.dataset.live, { headers: { "X-Console-Fetch": "1" }, credentials: "same-origin" });
        if (probe.status === 401) { window.location.assign("/console/login?expired=1"); return; }
        if (probe.body) probe.body.cancel();
      } catch (err) { /* the control plane is unreachable */ }
      el.dataset.liveError = "1";
      const note = document.createElement("p");
      note.className = "alert alert-error";
      note.setAttribute("role", "alert");
      note.textContent = "Live updates stopped (the control plane did not answer). Reload the page to resume.";
      el.prepend(note);
    });
    window.addEventListener("pagehide", () => source.close());
  }

  // -- copy buttons: <button data-copy="#selector">
  function copy(button) {
    button.addEventListener("click", async () => {
      const target = document.querySelector(button.dataset.copy);
      if (!target) return;
      const text = target.textContent.trim();
      try {
        await navigator.clipboard.writeText(text);
      } catch (err) {
        const range = document.createRange();
        range.selectNodeContents(target);
        const sel = window.getSelection();
        sel.removeAllRanges();
        sel.addRange(range);
        document.execCommand("copy");
      }
      const before = button.textContent;
      button.textContent = "Copied ✓";
      button.dataset.copied = "1";
      setTimeout(() => { button.textContent = before; }, 2000);
    });
  }

  function bind(root) {
    root.querySelectorAll("form[data-confirm]").forEach((form) => {
      if (form.dataset.bound) return;
      form.dataset.bound = "1";
      form.addEventListener("submit", (e) => { if (!window.confirm(form.dataset.confirm)) e.preventDefault(); });
    });
    root.querySelectorAll("button[data-copy]").forEach((b) => { if (!b.dataset.bound) { b.dataset.bound = "1"; copy(b); } });
    root.querySelectorAll("a[data-back]").forEach((a) => {
      if (a.dataset.bound) return;
      a.dataset.bound = "1";
      a.addEventListener("click", (e) => { if (history.length > 1) { e.preventDefault(); history.back(); } });
    });
  }

  // -- playground: POST the form, read the job's SSE stream from the response body.
  function playground(form) {
    const out = document.getElementById("pg-output");
    const state = document.getElementById("pg-state");
    const error = document.getElementById("pg-error");
    const send = document.getElementById("pg-send");
    const stop = document.getElementById("pg-stop");
    const stat = (name, value) => { form.ownerDocument.querySelector(`[data-stat="${name}"]`).textContent = value; };
    let controller = null;

    const setState = (s) => { out.dataset.state = s; state.dataset.state = s; state.textContent = s; };
    const fmt = (n, digits = 0) => (n === null || n === undefined) ? "–" : Number(n).toLocaleString(undefined, { maximumFractionDigits: digits, minimumFractionDigits: digits });

    function showError(message, requestId) {
      error.hidden = false;
      error.textContent = message + (requestId ? `  (request id ${requestId})` : "");
      setState("error");
    }

    function onEvent(name, data, started, counters) {
      if (name === "routing") {
        stat("model", `${data.model} (auto: ${data.task})`);
      } else if (name === "job") {
        stat("job", data.id);
        counters.job = data.id;
        if (!counters.routed) stat("model", data.model);
        setState("waiting");
      } else if (name === "token") {
        if (counters.tokens === 0) {
          out.textContent = "";
          stat("ttft", `${fmt(performance.now() - started)} ms`);
          setState("streaming");
        }
        counters.tokens += 1;
        out.dataset.tokenEvents = String(counters.tokens);
        out.append(document.createTextNode(data.text));
      } else if (name === "done" || name === "error") {
        const r = data.result || {};
        if (data.model) stat("model", data.model);
        if (r.usage) stat("tokens", `${fmt(r.usage.prompt_tokens)} in · ${fmt(r.usage.completion_tokens)} out`);
        if (data.time_to_first_token_ms !== undefined && data.time_to_first_token_ms !== null) stat("ttft", `${fmt(data.time_to_first_token_ms)} ms`);
        if (r.tokens_per_second) stat("tps", fmt(r.tokens_per_second, 1));
        stat("credits", data.credits_charged === undefined || data.credits_charged === null ? "–" : fmt(data.credits_charged));
        const link = document.createElement("a");
        link.href = `/console/jobs/${data.id}`;
        link.textContent = data.id;
        const cell = document.querySelector('[data-stat="job"]');
        cell.textContent = "";
        cell.append(link);
        if (name === "done") {
          if (counters.tokens === 0) out.textContent = r.content || "";
          setState("done");
        } else {
          showError(`${data.error || "error"}: ${data.error_message || "the job failed"}`, null);
        }
      }
    }

    async function run() {
      error.hidden = true;
      out.textContent = "";
      out.dataset.tokenEvents = "0";
      ["model", "tokens", "ttft", "tps", "credits", "job"].forEach((s) => stat(s, "–"));
      setState("sending");
      send.disabled = true;
      stop.hidden = false;
      controller = new AbortController();
      const started = performance.now();
      const counters = { tokens: 0, job: null, routed: false };
      try {
        const response = await fetch(form.action, {
          method: "POST", body: new URLSearchParams(new FormData(form)), signal: controller.signal,
          headers: { "X-CSRF-Token": csrf(), "X-Console-Fetch": "1", "Accept": "text/event-stream" },
          credentials: "same-origin",
        });
        if (!response.ok) {
          let body = {};
          try { body = await response.json(); } catch (e) { /* not JSON */ }
          if (response.status === 401) { window.location.assign("/console/login?expired=1"); return; }
          showError(body.error_message || `HTTP ${response.status}`, body.request_id || response.headers.get("x-request-id"));
          return;
        }
        const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
        let buffer = "";
        for (;;) {
          const { value, done } = await reader.read();
          if (done) break;
          buffer += value;
          let cut;
          while ((cut = buffer.indexOf("\n\n")) >= 0) {
            const block = buffer.slice(0, cut);
            buffer = buffer.slice(cut + 2);
            let name = "message";
            const data = [];
            for (const line of block.split("\n")) {
              if (line.startsWith("event:")) name = line.slice(6).trim();
              else if (line.startsWith("data:")) data.push(line.slice(5).replace(/^ /, ""));
            }
            if (!data.length) continue;
            let parsed;
            try { parsed = JSON.parse(data.join("\n")); } catch (e) { continue; }
            if (name === "routing") counters.routed = true;
            onEvent(name, parsed, started, counters);
          }
        }
      } catch (err) {
        if (err.name === "AbortError") setState("stopped reading");
        else showError(`The connection to the console broke: ${err.message}. The job keeps running; find it under Jobs.`, null);
      } finally {
        send.disabled = false;
        stop.hidden = true;
        controller = null;
      }
    }

    form.addEventListener("submit", (e) => { e.preventDefault(); if (!controller) run(); });
    stop.addEventListener("click", () => { if (controller) controller.abort(); });
    form.querySelector("textarea[name=prompt]").addEventListener("keydown", (e) => {
      if (e.key === "Enter" && (e.ctrlKey || e.metaKey)) { e.preventDefault(); form.requestSubmit(); }
    });
  }

  document.addEventListener("DOMContentLoaded", () => {
    bind(document);
    document.querySelectorAll("[data-live]").forEach(live);
    const pg = document.getElementById("playground");
    if (pg) playground(pg);
  });
})();
