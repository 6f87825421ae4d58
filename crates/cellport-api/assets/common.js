// What both pages share: the token kept for this tab, calls to the API, small DOM and
// formatting helpers. No framework, no build step: plain ES modules served by cellport-api.

const TOKEN_KEY = 'cellport.token';

/** Moves a `?token=` from the address into this tab's storage and out of the address bar. */
export function takeTokenFromAddress() {
  const url = new URL(window.location.href);
  const token = url.searchParams.get('token');
  if (token === null) return;
  url.searchParams.delete('token');
  if (token.trim() !== '') sessionStorage.setItem(TOKEN_KEY, token.trim());
  window.history.replaceState(window.history.state, '', url.pathname + url.search + url.hash);
}

export function storedToken() {
  return sessionStorage.getItem(TOKEN_KEY);
}

export function keepToken(token) {
  sessionStorage.setItem(TOKEN_KEY, token);
}

export function forgetToken() {
  sessionStorage.removeItem(TOKEN_KEY);
}

/** The claims of a JWT, read without checking it (the API checks it); null when unreadable. */
export function claimsOf(token) {
  const parts = token.split('.');
  if (parts.length !== 3) return null;
  try {
    const base64 = parts[1].replace(/-/g, '+').replace(/_/g, '/');
    const padded = base64 + '='.repeat((4 - (base64.length % 4)) % 4);
    const bytes = Uint8Array.from(atob(padded), (c) => c.charCodeAt(0));
    const claims = JSON.parse(new TextDecoder().decode(bytes));
    return claims && typeof claims === 'object' ? claims : null;
  } catch {
    return null;
  }
}

/** Why a token cannot be used, judged locally before the API is asked; null when it may be. */
export function tokenProblem(token) {
  const claims = claimsOf(token);
  if (!claims) return 'This is not a JWT (three dot-separated parts).';
  if (typeof claims.exp === 'number' && claims.exp * 1000 <= Date.now()) {
    return `This token expired at ${formatTime(new Date(claims.exp * 1000))}.`;
  }
  return null;
}

/** Who a token names, for the header: the usual user claims, then the e-mail. */
export function userOf(token) {
  const claims = claimsOf(token) || {};
  return claims.sub || claims.userId || claims.email || 'signed in';
}

/** An error answer of the API, or a network failure (status 0). */
export class ApiError extends Error {
  constructor(status, code, message, field, retryAfter) {
    super(message);
    this.status = status;
    this.code = code;
    this.field = field;
    this.retryAfter = retryAfter;
  }
}

/** Calls the API with the tab's token; answers the parsed JSON or throws an ApiError. */
export async function api(path, { method = 'GET', body, headers = {}, signal } = {}) {
  const token = storedToken();
  const init = { method, signal, headers: { Accept: 'application/json', ...headers } };
  if (token) init.headers.Authorization = `Bearer ${token}`;
  if (body !== undefined) {
    init.headers['Content-Type'] = 'application/json';
    init.body = JSON.stringify(body);
  }
  let response;
  try {
    response = await fetch(path, init);
  } catch (error) {
    if (error.name === 'AbortError') throw error;
    throw new ApiError(0, 'network', 'The server cannot be reached.');
  }
  const text = await response.text().catch(() => '');
  let data = null;
  try {
    data = text ? JSON.parse(text) : null;
  } catch {
    data = null;
  }
  if (!response.ok) {
    const error = (data && data.error) || {};
    const retryAfter = Number(response.headers.get('Retry-After')) || undefined;
    const apiError = new ApiError(
      response.status,
      error.code || 'http_' + response.status,
      error.message || `The server answered ${response.status}.`,
      error.field,
      retryAfter,
    );
    if (response.status === 401) {
      window.dispatchEvent(new CustomEvent('cellport:unauthorized', { detail: apiError }));
    }
    throw apiError;
  }
  return data;
}

/** Makes an element: `el('p', {class: 'x', onclick: f}, 'text', child…)`. Text stays text. */
export function el(tag, attributes = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attributes)) {
    if (value === undefined || value === null || value === false) continue;
    if (name.startsWith('on') && typeof value === 'function') {
      node.addEventListener(name.slice(2), value);
    } else if (name === 'class') {
      node.className = value;
    } else if (name in node && typeof value !== 'string') {
      node[name] = value;
    } else {
      node.setAttribute(name, value === true ? '' : value);
    }
  }
  for (const child of children.flat()) {
    if (child === undefined || child === null || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

export function show(node, visible) {
  node.hidden = !visible;
}

export function formatBytes(bytes) {
  if (bytes === null || bytes === undefined) return '–';
  const units = ['B', 'KB', 'MB', 'GB', 'TB'];
  let value = bytes;
  let unit = 0;
  while (value >= 1000 && unit < units.length - 1) {
    value /= 1000;
    unit += 1;
  }
  return `${value >= 100 || unit === 0 ? Math.round(value) : value.toFixed(1)} ${units[unit]}`;
}

export function formatDuration(ms) {
  if (ms === null || ms === undefined) return '–';
  const seconds = Math.round(ms / 1000);
  if (seconds < 60) return `${seconds} s`;
  const minutes = Math.floor(seconds / 60);
  if (minutes < 60) return seconds % 60 ? `${minutes} min ${seconds % 60} s` : `${minutes} min`;
  return minutes % 60 ? `${Math.floor(minutes / 60)} h ${minutes % 60} min` : `${Math.floor(minutes / 60)} h`;
}

export function formatTime(date) {
  if (!date) return '–';
  const d = date instanceof Date ? date : new Date(date);
  if (Number.isNaN(d.getTime())) return '–';
  return d.toLocaleString(undefined, {
    year: 'numeric', month: 'short', day: 'numeric', hour: '2-digit', minute: '2-digit', second: '2-digit',
  });
}

/** A short time for tables: the day and the time of day. */
export function formatShortTime(date) {
  if (!date) return '–';
  const d = date instanceof Date ? date : new Date(date);
  if (Number.isNaN(d.getTime())) return '–';
  return d.toLocaleString(undefined, {
    month: 'short', day: 'numeric', hour: '2-digit', minute: '2-digit', second: '2-digit',
  });
}

export function formatPercent(value) {
  return `${Math.floor(value)} %`;
}

/** A random key for Idempotency-Key (also where crypto.randomUUID is missing: plain http). */
export function randomKey() {
  const bytes = new Uint8Array(16);
  crypto.getRandomValues(bytes);
  return Array.from(bytes, (b) => b.toString(16).padStart(2, '0')).join('');
}

/**
 * Wires the sign-in form and the header of a page: a `?token=` or a stored token signs in at
 * once; `onSignedIn(token)` runs once a token is kept, `onSignedOut()` when it is dropped (the
 * sign-out button, or an API answer of 401).
 */
export function setUpSignIn({ onSignedIn, onSignedOut }) {
  const form = document.getElementById('sign-in-form');
  const input = document.getElementById('token-input');
  const error = document.getElementById('sign-in-error');
  const signOut = document.getElementById('sign-out');
  const who = document.getElementById('who');

  const showSignIn = (message) => {
    show(document.getElementById('sign-in'), true);
    show(document.getElementById('app'), false);
    show(signOut, false);
    show(who, false);
    error.textContent = message || '';
    show(error, Boolean(message));
    input.focus();
  };
  const signedIn = (token) => {
    show(document.getElementById('sign-in'), false);
    show(document.getElementById('app'), true);
    who.textContent = userOf(token);
    show(who, true);
    show(signOut, true);
    onSignedIn(token);
  };

  form.addEventListener('submit', (event) => {
    event.preventDefault();
    const token = input.value.trim();
    const problem = tokenProblem(token);
    if (problem) {
      error.textContent = problem;
      show(error, true);
      return;
    }
    keepToken(token);
    input.value = '';
    signedIn(token);
  });
  signOut.addEventListener('click', () => {
    forgetToken();
    onSignedOut();
    showSignIn();
  });
  window.addEventListener('cellport:unauthorized', (event) => {
    if (!storedToken()) return;
    forgetToken();
    onSignedOut();
    showSignIn(`Signed out: ${event.detail.message}`);
  });

  takeTokenFromAddress();
  const token = storedToken();
  const problem = token && tokenProblem(token);
  if (!token || problem) {
    forgetToken();
    showSignIn(problem || '');
  } else {
    signedIn(token);
  }
}
