// The page's state lives in its URL (?q=<KFL>&since&until&view&call&group&snapshot), so a view pasted into
// an incident channel opens the same. Views subscribe to changes; navigation pushes history entries.

const KEYS = ["view", "q", "since", "until", "group", "call", "snapshot"];
const listeners = [];

export function current() {
  const params = new URLSearchParams(location.search);
  const state = {};
  for (const key of KEYS) state[key] = params.get(key) || "";
  state.view = state.view || "traffic";
  state.group = state.group || "workload";
  return state;
}

export function update(changes, { replace = false } = {}) {
  const next = { ...current(), ...changes };
  const params = new URLSearchParams();
  for (const key of KEYS) {
    const value = next[key];
    const fallback = { view: "traffic", group: "workload" }[key];
    if (value && value !== fallback) params.set(key, value);
  }
  const search = params.toString();
  const url = `${location.pathname}${search ? `?${search}` : ""}`;
  if (url !== `${location.pathname}${location.search}`) {
    if (replace) history.replaceState(null, "", url);
    else history.pushState(null, "", url);
  }
  notify();
}

export function onChange(listener) { listeners.push(listener); }
export function notify() { for (const listener of listeners) listener(current()); }
window.addEventListener("popstate", notify);

// The window every query of the page passes on (the hub reads RFC 3339 and relative times alike).
export function windowParams(state = current()) {
  return { since: state.since, until: state.until, snapshot: state.snapshot };
}
