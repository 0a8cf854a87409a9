// The server's JSON API (crates/cloister-server/openapi.json). Errors carry the server's stable code.

export class ApiError extends Error {
  constructor(
    readonly status: number,
    readonly code: string,
    message: string,
  ) {
    super(message);
  }
}

export interface Course {
  id: string;
  org_id: string | null;
  title: string;
  description: string;
  price_minor: number;
  currency: string;
  visibility: string;
  created_at: string;
  teachers: string[];
}

export interface LiveSession {
  id: string;
  course_id: string;
  starts_at: string;
  ends_at: string;
  capacity: number;
  staff?: { teachers: string[]; tas: string[] };
}

export interface Me {
  user_id: string;
  created_at: string;
  session_expires_at: string;
}

export interface MyCourses {
  teaching: Course[];
  enrolled: Course[];
}

const TOKEN = "cloister.token";

export function token(): string | null {
  return localStorage.getItem(TOKEN);
}

export function setToken(t: string | null): void {
  if (t === null) localStorage.removeItem(TOKEN);
  else localStorage.setItem(TOKEN, t);
}

export async function call<T>(method: string, path: string, body?: unknown): Promise<T> {
  const headers: Record<string, string> = { accept: "application/json" };
  const t = token();
  if (t !== null) headers["authorization"] = `Bearer ${t}`;
  const init: RequestInit = { method, headers };
  if (body !== undefined) {
    headers["content-type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  let resp: Response;
  try {
    resp = await fetch(path, init);
  } catch {
    throw new ApiError(0, "network", "The server cannot be reached. Check your connection and try again.");
  }
  const text = await resp.text();
  let json: unknown = null;
  try {
    json = text === "" ? null : JSON.parse(text);
  } catch {
    json = null;
  }
  if (!resp.ok) {
    const err = (json as { error?: { code?: string; message?: string } } | null)?.error;
    if (resp.status === 401 && path !== "/api/v1/sessions") setToken(null);
    throw new ApiError(resp.status, err?.code ?? "http_" + resp.status, err?.message ?? resp.statusText);
  }
  return json as T;
}

export const api = {
  signUp: (email: string, password: string) =>
    call<{ user_id: string; recovery_code: string }>("POST", "/api/v1/accounts", { email, password }),
  signIn: (email: string, password: string) =>
    call<{ token: string; expires_at: string }>("POST", "/api/v1/sessions", { email, password }),
  signOut: () => call<null>("DELETE", "/api/v1/sessions/current"),
  me: () => call<Me>("GET", "/api/v1/me"),
  myCourses: () => call<MyCourses>("GET", "/api/v1/me/courses"),
  catalog: (q: string) =>
    call<{ courses: Course[]; total: number }>("GET", "/api/v1/catalog?q=" + encodeURIComponent(q)),
  course: (id: string) => call<Course>("GET", `/api/v1/courses/${encodeURIComponent(id)}`),
  createCourse: (title: string, description: string) =>
    call<Course>("POST", "/api/v1/courses", {
      title,
      description,
      price_minor: 0,
      currency: "EUR",
      visibility: "public",
    }),
  sessions: (course: string) =>
    call<LiveSession[]>("GET", `/api/v1/courses/${encodeURIComponent(course)}/sessions`),
  schedule: (course: string, startsAt: Date, endsAt: Date, capacity: number) =>
    call<LiveSession>("POST", `/api/v1/courses/${encodeURIComponent(course)}/sessions`, {
      starts_at: startsAt.toISOString().replace(/\.\d{3}Z$/, "Z"),
      ends_at: endsAt.toISOString().replace(/\.\d{3}Z$/, "Z"),
      capacity,
    }),
  enroll: (course: string) =>
    call<{ course_id: string; new: boolean }>("POST", `/api/v1/courses/${encodeURIComponent(course)}/enrollments`),
  liveSession: (id: string) => call<LiveSession>("GET", `/api/v1/live-sessions/${encodeURIComponent(id)}`),
  admit: (id: string) =>
    call<{ role: string; learners: number; capacity: number }>(
      "POST",
      `/api/v1/live-sessions/${encodeURIComponent(id)}/participants`,
    ),
  ticket: () => call<{ ticket: string; expires_at: string }>("POST", "/api/v1/ws-tickets"),
};
