/*
 * Etch explorer: verification in the browser.
 *
 * Everything here checks what the log serves instead of trusting it:
 *   - signed notes (C2SP signed-note): Ed25519 log signatures (key type 0x01) and
 *     timestamped witness cosignatures (C2SP tlog-cosignature, key type 0x04), with WebCrypto;
 *   - inclusion and consistency proofs with the RFC 9162 §2.1.3.2 and §2.1.4.2 algorithms;
 *   - token references: base64url-nopad(SHA-256("etch/token-ref/v1" || 0x00 || token)),
 *     computed here so that the token itself never leaves the browser.
 * The pages work without this script; only these checks need it. Data arrives in data-
 * attributes and JSON, and is shown with textContent only (never parsed as HTML).
 */
(function () {
  "use strict";

  const encoder = new TextEncoder();
  const TOKEN_REF_DOMAIN = encoder.encode("etch/token-ref/v1\u0000");
  const EM_DASH_PREFIX = "\u2014 ";

  // -- bytes ------------------------------------------------------------------------------

  function concat(...parts) {
    const total = parts.reduce((n, p) => n + p.length, 0);
    const out = new Uint8Array(total);
    let offset = 0;
    for (const p of parts) {
      out.set(p, offset);
      offset += p.length;
    }
    return out;
  }

  function equal(a, b) {
    if (a.length !== b.length) return false;
    let diff = 0;
    for (let i = 0; i < a.length; i++) diff |= a[i] ^ b[i];
    return diff === 0;
  }

  function b64encode(bytes) {
    let s = "";
    for (const b of bytes) s += String.fromCharCode(b);
    return btoa(s);
  }

  /** Strict standard base64: rejects anything that does not re-encode to the same text. */
  function b64decode(text) {
    if (typeof text !== "string" || !/^[A-Za-z0-9+/]*={0,2}$/.test(text) || text.length % 4 !== 0) {
      throw new Error("not canonical base64");
    }
    const raw = atob(text);
    const out = new Uint8Array(raw.length);
    for (let i = 0; i < raw.length; i++) out[i] = raw.charCodeAt(i);
    if (b64encode(out) !== text) throw new Error("not canonical base64");
    return out;
  }

  function b64url(bytes) {
    return b64encode(bytes).replace(/\+/g, "-").replace(/\//g, "_").replace(/=+$/, "");
  }

  function hex(bytes) {
    return Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
  }

  async function sha256(...parts) {
    return new Uint8Array(await crypto.subtle.digest("SHA-256", concat(...parts)));
  }

  // -- RFC 6962 / 9162 ----------------------------------------------------------------------

  const leafHash = (entry) => sha256(Uint8Array.of(0), entry);
  const nodeHash = (left, right) => sha256(Uint8Array.of(1), left, right);

  /** RFC 9162 §2.1.3.2: the root an inclusion proof leads to; throws for a malformed proof. */
  async function rootFromInclusion(leaf, index, treeSize, proof) {
    let fn = BigInt(index);
    let sn = BigInt(treeSize) - 1n;
    if (fn > sn) throw new Error("index is not below the tree size");
    let r = leaf;
    for (const p of proof) {
      if (sn === 0n) throw new Error("the proof is too long");
      if ((fn & 1n) === 1n || fn === sn) {
        r = await nodeHash(p, r);
        if ((fn & 1n) === 0n) {
          while ((fn & 1n) === 0n && fn !== 0n) {
            fn >>= 1n;
            sn >>= 1n;
          }
        }
      } else {
        r = await nodeHash(r, p);
      }
      fn >>= 1n;
      sn >>= 1n;
    }
    if (sn !== 0n) throw new Error("the proof is too short");
    return r;
  }

  async function verifyInclusion(leaf, index, treeSize, proof, root) {
    const computed = await rootFromInclusion(leaf, index, treeSize, proof);
    if (!equal(computed, root)) throw new Error("the proof leads to another root");
    return computed;
  }

  /** RFC 9162 §2.1.4.2, with the edge cases of sizes 0 and equal sizes. */
  async function verifyConsistency(first, second, firstRoot, secondRoot, proof) {
    let m = BigInt(first);
    const n = BigInt(second);
    if (m > n) throw new Error("the first size is larger than the second");
    if (m === n) {
      if (proof.length !== 0) throw new Error("equal sizes need an empty proof");
      if (!equal(firstRoot, secondRoot)) throw new Error("equal sizes with different roots");
      return;
    }
    if (m === 0n) {
      if (proof.length !== 0) throw new Error("a proof from size 0 is empty");
      return;
    }
    if (proof.length === 0) throw new Error("the proof is empty");
    let path = proof.slice();
    if ((m & (m - 1n)) === 0n) path = [firstRoot, ...path];
    let fn = m - 1n;
    let sn = n - 1n;
    while ((fn & 1n) === 1n) {
      fn >>= 1n;
      sn >>= 1n;
    }
    let fr = path[0];
    let sr = path[0];
    for (const c of path.slice(1)) {
      if (sn === 0n) throw new Error("the proof is too long");
      if ((fn & 1n) === 1n || fn === sn) {
        fr = await nodeHash(c, fr);
        sr = await nodeHash(c, sr);
        if ((fn & 1n) === 0n) {
          while ((fn & 1n) === 0n && fn !== 0n) {
            fn >>= 1n;
            sn >>= 1n;
          }
        }
      } else {
        sr = await nodeHash(sr, c);
      }
      fn >>= 1n;
      sn >>= 1n;
    }
    if (sn !== 0n) throw new Error("the proof is too short");
    if (!equal(fr, firstRoot)) throw new Error("the proof does not lead to the older root");
    if (!equal(sr, secondRoot)) throw new Error("the proof does not lead to the newer root");
  }

  // -- signed notes, checkpoints, keys -----------------------------------------------------

  function parseNote(note) {
    const end = note.lastIndexOf("\n\n");
    if (end < 0 || !note.endsWith("\n")) throw new Error("not a signed note");
    const text = note.slice(0, end + 1);
    const signatures = note
      .slice(end + 2, -1)
      .split("\n")
      .map((line) => {
        if (!line.startsWith(EM_DASH_PREFIX)) throw new Error("malformed signature line");
        const fields = line.slice(EM_DASH_PREFIX.length).split(" ");
        if (fields.length !== 2) throw new Error("malformed signature line");
        const raw = b64decode(fields[1]);
        if (raw.length < 5) throw new Error("signature too short");
        return { name: fields[0], keyId: raw.slice(0, 4), signature: raw.slice(4) };
      });
    return { text, signatures };
  }

  function parseCheckpoint(text) {
    const lines = text.split("\n");
    if (lines.length < 4 || lines[lines.length - 1] !== "") throw new Error("malformed checkpoint");
    if (!/^(0|[1-9][0-9]*)$/.test(lines[1])) throw new Error("malformed tree size");
    const root = b64decode(lines[2]);
    if (root.length !== 32) throw new Error("the root hash is not 32 bytes");
    return { origin: lines[0], size: BigInt(lines[1]), root };
  }

  async function parseVkey(vkey) {
    // <name>+<8 hex key ID>+<base64>: the name has no "+", the base64 may have some.
    const first = vkey.indexOf("+");
    const fields = [vkey.slice(0, first), vkey.slice(first + 1, first + 9), vkey.slice(first + 10)];
    if (first <= 0 || vkey[first + 9] !== "+" || !/^[0-9a-f]{8}$/.test(fields[1])) {
      throw new Error("malformed vkey");
    }
    const raw = b64decode(fields[2]);
    if (raw.length !== 33) throw new Error("not an Ed25519 vkey");
    const name = fields[0];
    const id = (await sha256(encoder.encode(name + "\n"), raw)).slice(0, 4);
    if (hex(id) !== fields[1]) throw new Error("the vkey's key ID does not match");
    const key = await crypto.subtle.importKey("raw", raw.slice(1), { name: "Ed25519" }, false, [
      "verify",
    ]);
    return { name, type: raw[0], keyId: id, key };
  }

  function findSignature(note, verifier) {
    return note.signatures.find((s) => s.name === verifier.name && equal(s.keyId, verifier.keyId));
  }

  /** Verify the log's Ed25519 signature (type 0x01) over the note text; throws if it fails. */
  async function verifyLogSignature(note, verifier) {
    if (verifier.type !== 0x01) throw new Error("the log key is not an Ed25519 note key");
    const found = findSignature(note, verifier);
    if (!found) throw new Error("the note has no signature by the log's key");
    const ok = await crypto.subtle.verify(
      { name: "Ed25519" }, verifier.key, found.signature, encoder.encode(note.text));
    if (!ok) throw new Error("the log's signature does not verify");
  }

  /** Verify a timestamped cosignature (type 0x04); returns its time or null if absent. */
  async function verifyCosignature(note, verifier) {
    const found = findSignature(note, verifier);
    if (!found) return null;
    if (verifier.type !== 0x04 || found.signature.length !== 72) throw new Error("not a cosignature");
    const view = new DataView(found.signature.buffer, found.signature.byteOffset, 8);
    const time = view.getBigUint64(0);
    const message = encoder.encode("cosignature/v1\ntime " + time.toString() + "\n" + note.text);
    const ok = await crypto.subtle.verify(
      { name: "Ed25519" }, verifier.key, found.signature.slice(8), message);
    if (!ok) throw new Error("the cosignature does not verify");
    return time;
  }

  /** Open a checkpoint note: log signature, parsed body and verified witness cosigners. */
  async function openCheckpoint(noteText, vkey, witnesses) {
    const note = parseNote(noteText);
    const logKey = await parseVkey(vkey);
    await verifyLogSignature(note, logKey);
    const checkpoint = parseCheckpoint(note.text);
    if (checkpoint.origin !== logKey.name) throw new Error("the origin is not the key's name");
    const cosigners = [];
    for (const w of witnesses) {
      const key = await parseVkey(w.vkey);
      const time = await verifyCosignature(note, key);
      if (time !== null) cosigners.push({ name: w.name, time });
    }
    return { checkpoint, cosigners };
  }

  async function tokenRef(token) {
    return b64url(await sha256(TOKEN_REF_DOMAIN, encoder.encode(token)));
  }

  // -- page helpers -------------------------------------------------------------------------

  function element(tag, attrs, ...children) {
    const el = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) el.setAttribute(k, v);
    for (const c of children) el.append(c instanceof Node ? c : document.createTextNode(String(c)));
    return el;
  }

  function setStatus(el, state, text) {
    el.classList.remove("ok", "bad", "pending");
    el.classList.add("status", state === true ? "ok" : state === false ? "bad" : "pending");
    el.textContent = (state === true ? "✓ " : state === false ? "✗ " : "") + text;
  }

  function badge(state, text) {
    const cls = state === true ? "ok" : state === false ? "bad" : "pending";
    const mark = state === true ? "✓ " : state === false ? "✗ " : "";
    return element("span", { class: "badge " + cls, "data-verified": String(state) }, mark + text);
  }

  function isoTime(ms) {
    if (typeof ms !== "number") return "unknown time";
    return new Date(ms).toISOString().replace("T", " ").replace(/\.\d+Z$/, " UTC");
  }

  function jsonAttr(el, name) {
    const raw = el.getAttribute(name);
    return raw ? JSON.parse(raw) : [];
  }

  async function fetchJSON(url) {
    const response = await fetch(url, { credentials: "same-origin", cache: "no-store" });
    if (!response.ok) {
      let detail = "HTTP " + response.status;
      try {
        const body = await response.json();
        if (body && body.detail) detail = body.detail;
      } catch (e) {
        /* not JSON: keep the status */
      }
      throw new Error(detail);
    }
    return response.json();
  }

  function witnessesText(cosigners) {
    if (cosigners.length === 0) return "no witness cosignature verified";
    return "cosigned by " + cosigners.map((c) => c.name).join(", ");
  }

  // -- "My token" ---------------------------------------------------------------------------

  async function loadEvents(section, ref) {
    const events = [];
    let after = null;
    let readable = false;
    for (let page = 0; page < 20; page++) {
      const params = new URLSearchParams({ token_ref: ref });
      if (after !== null) params.set("after", String(after));
      const body = await fetchJSON(section.dataset.eventsUrl + "?" + params.toString());
      readable = Boolean(body.readable);
      events.push(...body.results);
      if (body.next === null || body.next === undefined) break;
      after = body.next;
    }
    return { events, readable };
  }

  async function checkEvent(section, item, checkpoint) {
    const claimed = b64decode(item.leaf_hash);
    let leaf = claimed;
    if (typeof item.entry === "string") {
      leaf = await leafHash(b64decode(item.entry));
      if (!equal(leaf, claimed)) throw new Error("the entry's bytes do not hash to its leaf hash");
    }
    if (BigInt(item.index) >= checkpoint.size) return null;
    const params = new URLSearchParams({
      index: String(item.index),
      tree_size: checkpoint.size.toString(),
    });
    const body = await fetchJSON(section.dataset.proofUrl + "?" + params.toString());
    if (body.index !== item.index || String(body.tree_size) !== checkpoint.size.toString()) {
      throw new Error("the proof is for another entry or tree");
    }
    if (!equal(b64decode(body.leaf_hash), leaf)) throw new Error("the proof is for another leaf");
    await verifyInclusion(leaf, item.index, checkpoint.size, body.proof.map(b64decode), checkpoint.root);
    return true;
  }

  function eventItem(section, item) {
    const event = item.event && typeof item.event === "object" ? item.event.event || item.event : null;
    const title = event && typeof event.type === "string" ? event.type : "entry " + item.index;
    const link = element("a", { href: section.dataset.entryUrl + item.index }, "entry " + item.index);
    const details = element("p", { class: "when" }, isoTime(item.log_time), " · ", link);
    const li = element("li", { "data-index": String(item.index) }, element("h3", {}, title), details);
    if (event) {
      const facts = [];
      for (const key of ["client_id", "token_type", "grant_type", "reason", "active"]) {
        if (event[key] !== undefined) facts.push(key + ": " + JSON.stringify(event[key]));
      }
      if (Array.isArray(event.scope)) facts.push("scope: " + event.scope.join(" "));
      if (facts.length) li.append(element("p", {}, facts.join(" · ")));
    }
    const mark = element("p", { class: "verification" }, badge(null, "checking…"));
    li.append(mark);
    return { li, mark };
  }

  async function runToken(section, token) {
    const status = section.querySelector("#token-status");
    const list = section.querySelector("#token-events");
    const refOut = section.querySelector("#token-ref");
    list.replaceChildren();
    setStatus(status, null, "Computing the token reference in your browser…");
    const ref = await tokenRef(token);
    refOut.textContent = ref;
    setStatus(status, null, "Fetching the checkpoint and the token's events…");
    let opened;
    let checkpointError = null;
    try {
      const response = await fetch(section.dataset.checkpointUrl, { cache: "no-store" });
      if (!response.ok) throw new Error("no checkpoint (HTTP " + response.status + ")");
      opened = await openCheckpoint(
        await response.text(), section.dataset.vkey, jsonAttr(section, "data-witnesses"));
    } catch (e) {
      checkpointError = e;
    }
    const { events, readable } = await loadEvents(section, ref);
    events.sort((a, b) => (a.log_time - b.log_time) || (a.index - b.index));
    const summary = section.querySelector("#token-summary");
    let verified = 0;
    let failed = 0;
    let pending = 0;
    for (const item of events) {
      const { li, mark } = eventItem(section, item);
      list.append(li);
      let state;
      let text;
      if (checkpointError) {
        state = false;
        text = "failed: " + checkpointError.message;
      } else {
        try {
          const result = await checkEvent(section, item, opened.checkpoint);
          state = result;
          text = result === null
            ? "not yet in the published checkpoint"
            : "verified: included in the checkpoint of size " + opened.checkpoint.size;
        } catch (e) {
          state = false;
          text = "failed: " + e.message;
        }
      }
      if (state === true) verified++;
      else if (state === false) failed++;
      else pending++;
      mark.replaceChildren(badge(state, text));
    }
    if (checkpointError) {
      summary.replaceChildren(badge(false, "checkpoint failed: " + checkpointError.message));
    } else {
      summary.replaceChildren(
        badge(true, "checkpoint of size " + opened.checkpoint.size + " signed by the log"),
        " ",
        element("span", {}, witnessesText(opened.cosigners)));
    }
    const counts = events.length + " event" + (events.length === 1 ? "" : "s") + ": " + verified +
      " verified, " + failed + " failed" + (pending ? ", " + pending + " pending" : "") +
      (readable ? "" : " (event contents are shown to readers only)");
    setStatus(status, events.length === 0 ? null : failed === 0 && !checkpointError, counts);
  }

  function tokenPage(section) {
    const form = section.querySelector("#token-form");
    const input = section.querySelector("#token-input");
    form.addEventListener("submit", (ev) => {
      ev.preventDefault();
      const token = input.value.trim();
      const status = section.querySelector("#token-status");
      if (!token) {
        setStatus(status, false, "Paste a token first.");
        input.focus();
        return;
      }
      runToken(section, token).catch((e) => setStatus(status, false, "Failed: " + e.message));
    });
    section.querySelector("#token-js").hidden = false;
  }

  // -- an entry, a consistency proof, a checkpoint -----------------------------------------

  async function entryPage(section) {
    const status = section.querySelector(".browser-status");
    try {
      const opened = await openCheckpoint(
        section.dataset.checkpoint, section.dataset.vkey, jsonAttr(section, "data-witnesses"));
      const size = opened.checkpoint.size;
      if (size.toString() !== section.dataset.treeSize) throw new Error("the proof is for another tree size");
      let leaf = b64decode(section.dataset.leafHash);
      if (section.dataset.entry) {
        const computed = await leafHash(b64decode(section.dataset.entry));
        if (!equal(computed, leaf)) throw new Error("the entry's bytes do not hash to its leaf hash");
        leaf = computed;
      }
      const proof = jsonAttr(section, "data-proof").map(b64decode);
      await verifyInclusion(leaf, Number(section.dataset.index), size, proof, opened.checkpoint.root);
      setStatus(status, true, "Verified in your browser: the log's signature on the checkpoint, " +
        "and the inclusion proof from the leaf hash to its root (" + witnessesText(opened.cosigners) + ").");
    } catch (e) {
      setStatus(status, false, "Verification in your browser failed: " + e.message);
    }
  }

  async function consistencyPage(section) {
    const status = section.querySelector(".browser-status");
    try {
      const vkey = section.dataset.vkey;
      const roots = [];
      for (const which of ["first", "second"]) {
        const note = section.getAttribute("data-" + which + "-note");
        let root = b64decode(section.getAttribute("data-" + which + "-root"));
        if (note) {
          const opened = await openCheckpoint(note, vkey, []);
          if (opened.checkpoint.size.toString() !== section.getAttribute("data-" + which)) {
            throw new Error("the " + which + " checkpoint has another size");
          }
          if (!equal(opened.checkpoint.root, root)) throw new Error("the " + which + " root is not the signed one");
          root = opened.checkpoint.root;
        }
        roots.push(root);
      }
      await verifyConsistency(
        section.dataset.first, section.dataset.second, roots[0], roots[1],
        jsonAttr(section, "data-proof").map(b64decode));
      setStatus(status, true, "Verified in your browser: the newer tree extends the older one.");
    } catch (e) {
      setStatus(status, false, "Verification in your browser failed: " + e.message);
    }
  }

  async function checkpointBox(section) {
    const status = section.querySelector(".browser-status");
    try {
      const opened = await openCheckpoint(
        section.dataset.checkpoint, section.dataset.vkey, jsonAttr(section, "data-witnesses"));
      setStatus(status, true, "Verified in your browser: signed by the log's key, " +
        witnessesText(opened.cosigners) + ".");
    } catch (e) {
      setStatus(status, false, "Verification in your browser failed: " + e.message);
    }
  }

  function start() {
    const noCrypto = !(window.crypto && crypto.subtle);
    for (const el of document.querySelectorAll(".browser-status")) {
      if (noCrypto) setStatus(el, false, "This browser offers no WebCrypto here (a secure context is needed).");
      else setStatus(el, null, "Verifying in your browser…");
    }
    if (noCrypto) return;
    const token = document.getElementById("token-page");
    if (token) tokenPage(token);
    const entry = document.getElementById("entry-verify");
    if (entry) entryPage(entry);
    const consistency = document.getElementById("consistency-verify");
    if (consistency) consistencyPage(consistency);
    for (const box of document.querySelectorAll(".checkpoint-verify")) checkpointBox(box);
  }

  window.etchExplorer = { rootFromInclusion, verifyConsistency, tokenRef, openCheckpoint };
  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", start);
  else start();
})();
