// The JSON API as the /dashboard page calls it: with the API key the user entered (kept for the
// browser tab only, in sessionStorage), errors turned into Error objects carrying the API's message
// and the HTTP status.
"use strict";

export const $ = (id) => document.getElementById(id);

const KEY_STORE = "jobservice-key";

export function currentKey() { return $("key").value; }

export function restoreKey() { $("key").value = sessionStorage.getItem(KEY_STORE) || ""; }

export function saveKey() { sessionStorage.setItem(KEY_STORE, $("key").value); }

// The Authorization header goes on every call, the event stream's too: that is why the stream is
// read with fetch() and not EventSource, which cannot send headers.
export function authHeaders() {
  const key = currentKey();
  return key ? { Authorization: "Bearer " + key } : {};
}

export async function api(path, options = {}) {
  const headers = { "Content-Type": "application/json", ...authHeaders() };
  const response = await fetch(path, { ...options, headers });
  const body = response.status === 204 ? null : await response.json().catch(() => null);
  if (!response.ok) {
    const error = new Error((body && body.error && body.error.message) || `${response.status} ${response.statusText}`);
    error.status = response.status; // 401/403: this key may not; a panel then says so, once
    throw error;
  }
  return body;
}
