// The API as the page uses it: the token lives in sessionStorage only and goes in the
// Authorization header, never in a URL.

const TOKEN_KEY = "healthsync.token";

export class ApiError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

export function savedToken() {
  return sessionStorage.getItem(TOKEN_KEY);
}

export function saveToken(token) {
  sessionStorage.setItem(TOKEN_KEY, token);
}

export function forgetToken() {
  sessionStorage.removeItem(TOKEN_KEY);
}

export function authHeaders(extra = {}) {
  return { ...extra, Authorization: `Bearer ${savedToken()}` };
}

export async function request(path, options = {}) {
  const response = await fetch(path, {
    ...options,
    headers: authHeaders(options.headers || {}),
    cache: "no-store",
  });
  if (!response.ok) {
    let message = `${response.status} ${response.statusText}`;
    try {
      const body = await response.json();
      message = body.error?.message || body.issue?.[0]?.diagnostics || message;
    } catch {
      // Not JSON: keep the status line.
    }
    throw new ApiError(response.status, message);
  }
  return response.json();
}

// Every alert a /v1/alerts query matches: pages of at most 1000, following next_cursor.
export async function allAlerts(query) {
  const alerts = [];
  let cursor = null;
  do {
    const page = await request(`/v1/alerts?${query}&limit=1000${cursor ? `&cursor=${cursor}` : ""}`);
    alerts.push(...page.alerts);
    cursor = page.next_cursor;
  } while (cursor);
  return alerts;
}

// What this token may see: "clinical" (patients and alerts), "summary" (viewer) or an error.
export async function probeAccess() {
  try {
    await request("/v1/patients?limit=1");
    return "clinical";
  } catch (error) {
    if (!(error instanceof ApiError) || error.status !== 403) throw error;
  }
  await request("/v1/summary");
  return "summary";
}
