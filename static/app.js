/* uploadsvc pages: uploads with progress, live status, the file list's delete.
 *
 * Loaded by every page (no inline script: the pages' CSP forbids it). The
 * prefix the app is served under comes from <body data-root>. Without this
 * script every page still works: the form posts and the server redirects to
 * the upload's page, which refreshes itself until the upload is final.
 */
"use strict";
(function () {
  const root = document.body.dataset.root || "";
  const CONCURRENCY = 3;
  const FINAL = new Set(["completed", "failed"]);
  const EXPLAIN = {
    uploading: "Sending the file.",
    queued: "Received and kept safe; waiting for its turn.",
    storing: "Being written to storage.",
    processing: "Stored; the processing steps are running.",
    completed: "Stored and processed: ready to download.",
    failed: "Could not be finished.",
    cancelled: "Cancelled: nothing was kept.",
    waiting: "Waiting to start.",
  };
  document.documentElement.classList.add("js");

  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [key, value] of Object.entries(attrs || {})) {
      if (key === "class") node.className = value;
      else if (key === "text") node.textContent = value;
      else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
      else node.setAttribute(key, value);
    }
    for (const child of children) if (child != null) node.append(child);
    return node;
  }

  function humanBytes(size) {
    const units = ["bytes", "KiB", "MiB", "GiB", "TiB"];
    let value = size, unit = 0;
    while (value >= 1024 && unit < units.length - 1) { value /= 1024; unit++; }
    if (unit === 0) return size.toLocaleString("en") + (size === 1 ? " byte" : " bytes");
    return (Math.round(value * 10) / 10).toString() + " " + units[unit];
  }

  function humanTime(seconds) {
    if (!isFinite(seconds)) return "";
    if (seconds < 60) return Math.max(1, Math.round(seconds)) + " s";
    const minutes = Math.floor(seconds / 60);
    if (minutes < 60) return minutes + " min " + Math.round(seconds % 60) + " s";
    return Math.floor(minutes / 60) + " h " + (minutes % 60) + " min";
  }

  function announce(text) {
    const live = document.getElementById("announcer");
    if (live) { live.textContent = ""; setTimeout(() => { live.textContent = text; }, 50); }
  }

  function statusBadge(status) {
    return el("span", { class: "status status-" + status },
      el("span", { class: "status-dot", "aria-hidden": "true" }), status);
  }

  /* What a failed answer means for the person, with no JSON or internals. */
  function explainError(status, body, file, limitText) {
    const code = body && body.code;
    switch (status) {
      case 0: return "The connection was lost before the upload finished. Nothing was kept.";
      case 401: return "Your sign-in has expired. Sign in again (reload this page), then try again.";
      case 403: return "This sign-in may not upload files.";
      case 408: return "The upload stalled and was stopped. Nothing was kept.";
      case 413: return file.name + " is larger than the limit of " + limitText + ".";
      case 415: return "The file was not sent as a file upload. Reload the page and try again.";
      case 422:
        if (code === "rejected") return refusal(file.name, body.detail);
        return "The upload could not be used.";
      case 503: return "Storage is unavailable right now. Nothing was kept; try again in a minute.";
      case 507: return "Storage is full. Nothing was kept.";
      default: return "The upload failed (error " + status + "). Nothing was kept; try again.";
    }
  }

  /* "rejected by mimetype: type x is not allowed" -> "refused by mimetype: type x is not allowed." */
  function refusal(name, reason) {
    const match = /^rejected by ([^:]+): (.*)$/s.exec(reason || "");
    let text = " by a processing step";
    if (match) text = " by " + match[1] + ": " + match[2];
    else if (reason) text = ": " + reason;
    return name + " was refused" + text + (/[.!?]$/.test(text) ? "" : ".");
  }

  function failureText(record) {
    if (record.rejected) return refusal(record.filename, record.error);
    if ((record.error || "").startsWith("storing"))
      return "It could not be written to storage. Upload it again; if this keeps happening, tell whoever runs this service (upload " + record.id + ").";
    return "Processing did not finish. Upload it again; if this keeps happening, tell whoever runs this service (upload " + record.id + ").";
  }

  async function fetchRecord(id) {
    const answer = await fetch(root + "/uploads/" + encodeURIComponent(id), {
      headers: { Accept: "application/json" }, credentials: "same-origin", cache: "no-store",
    });
    if (!answer.ok) throw new Error("status " + answer.status);
    return answer.json();
  }

  /* Poll an upload's record with backoff until its status is final. */
  async function follow(id, onStatus) {
    let delay = 250, seen = null, failures = 0;
    for (;;) {
      try {
        const record = await fetchRecord(id);
        failures = 0;
        if (record.status !== seen) { seen = record.status; onStatus(record); delay = 250; }
        if (FINAL.has(record.status)) return record;
      } catch (error) {
        if (++failures >= 8) throw error;
      }
      await new Promise((resolve) => setTimeout(resolve, delay));
      delay = Math.min(delay * 1.6, 4000);
    }
  }

  /* ---------- The upload pages ---------- */

  function uploader(form) {
    const mode = form.dataset.mode;
    const limit = Number(form.dataset.limit);
    const limitText = form.dataset.limitText;
    const input = form.querySelector("input[type=file]");
    const zone = document.getElementById("dropzone");
    const queue = document.getElementById("queue");
    const section = document.getElementById("queue-section");
    const waiting = [];
    let running = 0;

    input.multiple = true;
    input.required = false;
    input.tabIndex = -1;
    zone.tabIndex = 0;
    zone.setAttribute("role", "button");
    zone.setAttribute("aria-label", "Choose files to upload, or drop them here");
    zone.setAttribute("aria-describedby", "dropzone-hint");
    form.querySelector("label[for=file]").textContent = "Choose files";

    zone.addEventListener("click", (event) => {
      if (event.target !== input) { event.preventDefault(); input.click(); }
    });
    zone.addEventListener("keydown", (event) => {
      if (event.key === "Enter" || event.key === " ") { event.preventDefault(); input.click(); }
    });
    input.addEventListener("change", () => { add(input.files); input.value = ""; });
    form.addEventListener("submit", (event) => { event.preventDefault(); add(input.files); });
    for (const name of ["dragenter", "dragover"]) {
      zone.addEventListener(name, (event) => { event.preventDefault(); zone.classList.add("over"); });
    }
    zone.addEventListener("dragleave", (event) => {
      if (!zone.contains(event.relatedTarget)) zone.classList.remove("over");
    });
    zone.addEventListener("drop", (event) => {
      event.preventDefault();
      zone.classList.remove("over");
      if (event.dataTransfer) add(event.dataTransfer.files);
    });
    // A file dropped beside the zone must not replace the page.
    window.addEventListener("dragover", (event) => event.preventDefault());
    window.addEventListener("drop", (event) => event.preventDefault());

    function add(files) {
      if (!files || !files.length) return;
      section.hidden = false;
      for (const file of Array.from(files)) {
        const item = row(file);
        queue.prepend(item.node);
        if (file.size > limit) {
          item.node.classList.add("not-sent");
          item.fail(file.name + " is " + humanBytes(file.size) + ", over the limit of " + limitText + ". It was not sent.", false);
          continue;
        }
        waiting.push(item);
      }
      pump();
    }

    function pump() {
      while (running < CONCURRENCY && waiting.length) {
        const item = waiting.shift();
        running++;
        item.start().finally(() => { running--; pump(); });
      }
    }

    function row(file) {
      const name = el("span", { class: "item-name" }, file.name);
      const size = el("span", { class: "item-size", text: humanBytes(file.size) });
      const bar = el("progress", { max: "100", value: "0", "aria-label": "Upload progress of " + file.name });
      const percent = el("span", { class: "item-percent", text: "0 %" });
      const speed = el("span", { class: "item-speed" });
      const eta = el("span", { class: "item-eta" });
      const state = el("span", { class: "item-status" });
      const note = el("span", { class: "item-note" });
      const actions = el("span", { class: "item-actions" });
      const detail = el("div", { class: "item-detail" }, state, note, percent, speed, eta);
      const node = el("li", { class: "item" }, el("div", {}, name, size), actions, bar, detail);
      let xhr = null, cancelled = false;
      const item = { node, start, fail };
      setStatus("waiting");
      actions.append(cancelButton());

      function cancelButton() {
        return el("button", { type: "button", class: "button small", "aria-label": "Cancel " + file.name, onclick: cancel, text: "Cancel" });
      }

      function setStatus(status, text) {
        node.dataset.status = status;
        state.replaceChildren(statusBadge(status));
        note.textContent = text === undefined ? EXPLAIN[status] || "" : text;
      }

      function cancel() {
        cancelled = true;
        if (xhr) xhr.abort();
        const index = waiting.indexOf(item);
        if (index >= 0) waiting.splice(index, 1);
        setStatus("cancelled");
        speed.textContent = eta.textContent = "";
        actions.replaceChildren(retryButton());
        announce(file.name + ": cancelled.");
      }

      function retryButton() {
        return el("button", {
          type: "button", class: "button small", "aria-label": "Try " + file.name + " again", text: "Try again",
          onclick: () => {
            cancelled = false;
            node.querySelector(".message")?.remove();
            bar.value = 0; percent.textContent = "0 %";
            setStatus("waiting");
            actions.replaceChildren(cancelButton());
            waiting.push(item); pump();
          },
        });
      }

      function fail(message, canRetry = true) {
        setStatus("failed", "");
        speed.textContent = eta.textContent = "";
        node.querySelector(".message")?.remove();
        node.append(el("p", { class: "message error", role: "alert" },
          el("span", { class: "message-icon", "aria-hidden": "true", text: "!" }), el("span", { text: message })));
        actions.replaceChildren(...(canRetry ? [retryButton()] : []));
      }

      function finished(record) {
        node.classList.add(record.status === "completed" ? "done" : "ended");
        name.replaceChildren(el("a", { href: root + "/uploads/" + record.id }, file.name));
        actions.replaceChildren();
        if (record.status === "completed") {
          actions.append(el("a", { class: "button small", href: root + "/uploads/" + record.id + "/content", download: "", "aria-label": "Download " + file.name, text: "Download" }));
          refreshRecent();
          try { new BroadcastChannel("uploadsvc").postMessage({ uploaded: record.id }); } catch (e) { /* old browser */ }
        }
      }

      function start() {
        return new Promise((resolve) => {
          if (cancelled) { resolve(); return; }
          const began = performance.now();
          const action = form.getAttribute("action");
          const body = new FormData();
          body.append("file", file, file.name);
          xhr = new XMLHttpRequest();
          xhr.open("POST", action);
          xhr.setRequestHeader("Accept", "application/json");
          setStatus("uploading");
          xhr.upload.onprogress = (event) => {
            if (!event.lengthComputable) return;
            const fraction = event.loaded / event.total;
            bar.value = Math.round(fraction * 100);
            percent.textContent = Math.floor(fraction * 100) + " %";
            const seconds = (performance.now() - began) / 1000;
            if (seconds > 0.2) {
              const rate = event.loaded / seconds;
              speed.textContent = humanBytes(Math.round(rate)) + "/s";
              eta.textContent = fraction < 1 ? humanTime((event.total - event.loaded) / rate) + " left" : "";
            }
          };
          xhr.upload.onload = () => {
            bar.value = 100; percent.textContent = "100 %"; eta.textContent = "";
            if (mode === "blocking") setStatus("processing", "Sent; storing and processing before the answer.");
          };
          xhr.onabort = () => resolve();
          xhr.onerror = () => { fail(explainError(0, null, file, limitText)); announce(file.name + ": the connection was lost."); resolve(); };
          xhr.onload = async () => {
            let answer = null;
            try { answer = JSON.parse(xhr.responseText); } catch (e) { answer = null; }
            if (xhr.status === 201 && answer) {
              setStatus(answer.status);
              finished(answer);
              if (answer.status === "failed") fail(failureText(answer), !answer.rejected);
              announce(file.name + ": " + answer.status + ".");
            } else if (xhr.status === 202 && answer) {
              setStatus(answer.status);
              announce(file.name + ": received, " + answer.status + ".");
              try {
                const record = await follow(answer.id, (r) => {
                  setStatus(r.status);
                  if (!FINAL.has(r.status)) announce(file.name + ": " + r.status + ".");
                });
                finished(record);
                // A refusal would only be refused again; another failure may pass next time.
                if (record.status === "failed") fail(failureText(record), !record.rejected);
                announce(file.name + ": " + record.status + ".");
              } catch (error) {
                fail("Its status could not be read just now; it may still finish. See the file list.");
              }
            } else {
              const refused = xhr.status === 422 && answer && answer.code === "rejected";
              fail(explainError(xhr.status, answer, file, limitText), !refused);
              announce(file.name + ": failed.");
            }
            resolve();
          };
          xhr.send(body);
        });
      }
      return item;
    }
  }

  /* The upload pages' short list of recent files, from the JSON API. */
  async function refreshRecent() {
    const box = document.getElementById("recent");
    const list = document.getElementById("recent-list");
    if (!box || !list) return;
    try {
      const answer = await fetch(root + "/uploads?limit=5", { headers: { Accept: "application/json" }, credentials: "same-origin", cache: "no-store" });
      if (!answer.ok) return;
      const page = await answer.json();
      list.replaceChildren(...page.items.map((record) => el("li", {},
        el("a", { href: root + "/uploads/" + record.id }, record.filename),
        el("span", { class: "muted", text: humanBytes(record.size) }))));
      box.hidden = page.items.length === 0;
    } catch (e) { /* the list is a convenience */ }
  }

  /* ---------- One upload's page ---------- */

  function recordPage(box) {
    if (box.dataset.final === "true") return;
    const status = document.getElementById("status");
    follow(box.dataset.id, (record) => {
      status.replaceChildren(statusBadge(record.status), " ", el("span", { class: "status-note", text: EXPLAIN[record.status] }));
    }).then(async () => {
      // Final: the server renders the whole outcome (download, thumbnail, failure).
      const answer = await fetch(location.href, { headers: { Accept: "text/html" }, credentials: "same-origin", cache: "no-store" });
      const page = new DOMParser().parseFromString(await answer.text(), "text/html");
      const fresh = page.getElementById("record");
      if (fresh) { box.replaceWith(fresh); }
    }).catch(() => { /* the status stays as last seen */ });
  }

  /* ---------- The file list ---------- */

  function fileList(container) {
    for (const button of container.querySelectorAll(".js-delete")) {
      button.hidden = false;
      button.addEventListener("click", async () => {
        const row = button.closest("tr");
        if (!window.confirm("Delete " + button.dataset.name + "? This cannot be undone.")) return;
        button.disabled = true;
        const answer = await fetch(root + "/uploads/" + encodeURIComponent(row.dataset.id), {
          method: "DELETE", credentials: "same-origin", headers: { Accept: "application/json" },
        }).catch(() => null);
        if (answer && (answer.status === 204 || answer.status === 404)) {
          row.remove();
          announce(button.dataset.name + " deleted.");
        } else {
          button.disabled = false;
          announce("Could not delete " + button.dataset.name + "; try again.");
          window.alert("Could not delete " + button.dataset.name + ". Try again in a moment.");
        }
      });
    }
  }

  async function reloadList() {
    const answer = await fetch(location.href, { headers: { Accept: "text/html" }, credentials: "same-origin", cache: "no-store" });
    if (!answer.ok) return;
    const page = new DOMParser().parseFromString(await answer.text(), "text/html");
    const fresh = page.getElementById("files");
    const current = document.getElementById("files");
    if (fresh && current) { current.replaceWith(fresh); fileList(fresh); announce("The file list was updated."); }
  }

  const form = document.getElementById("uploader");
  if (form) { uploader(form); refreshRecent(); }
  const record = document.getElementById("record");
  if (record) recordPage(record);
  const files = document.getElementById("files");
  if (files) {
    fileList(files);
    try { new BroadcastChannel("uploadsvc").onmessage = () => reloadList(); } catch (e) { /* old browser */ }
  }
})();
