// The browser classroom: hash routes for sign up, sign in, catalog and my courses, a course, and the live room.
import "./style.css";
import { api, ApiError, setToken, token, type Course, type Me } from "./api";
import { errorLine, field, h, mount, short, toast } from "./ui";
import { loadCore } from "./core";
import { liveRoom, leaveRoom, type Early } from "./roomview";

let me: Me | null = null;

async function whoAmI(): Promise<Me | null> {
  if (token() === null) return null;
  if (me !== null) return me;
  try {
    me = await api.me();
  } catch {
    me = null;
    setToken(null);
  }
  return me;
}

function nav(signedIn: boolean): void {
  const n = document.getElementById("nav");
  if (n === null) return;
  n.replaceChildren(
    ...(signedIn
      ? [
          h("a", { href: "#/" }, "Courses"),
          h(
            "button",
            {
              type: "button",
              class: "link",
              onclick: () => {
                void api.signOut().catch(() => {});
                setToken(null);
                me = null;
                location.hash = "#/signin";
              },
            },
            "Sign out",
          ),
        ]
      : [h("a", { href: "#/signin" }, "Sign in"), h("a", { href: "#/signup" }, "Sign up")]),
  );
}

function message(e: unknown): string {
  if (e instanceof ApiError) return e.message;
  return e instanceof Error ? e.message : String(e);
}

/** A form's submit handler: clears the form's error line, runs `work`, and shows what went wrong in that line. */
function onSubmit(err: ReturnType<typeof errorLine>, work: () => Promise<void>): (ev: Event) => void {
  return (ev: Event) => {
    ev.preventDefault();
    err.set("");
    work().catch((e: unknown) => err.set(message(e)));
  };
}

function signUpPage(): void {
  const email = h("input", { type: "email", name: "email", autocomplete: "email", required: true });
  const password = h("input", { type: "password", name: "password", autocomplete: "new-password", required: true, minlength: 10 });
  const err = errorLine();
  const form = h(
    "form",
    {
      class: "card narrow",
      onsubmit: onSubmit(err, async () => {
        const created = await api.signUp(email.value, password.value);
        const session = await api.signIn(email.value, password.value);
        setToken(session.token);
        me = null;
        recoveryPage(created.recovery_code);
      }),
    },
    h("h1", {}, "Create your account"),
    h("p", { class: "muted" }, "Cloister keeps only a keyed hash of your email and a hash of your password. Your name is never sent to the server."),
    field("Email", email),
    field("Password (at least 10 characters)", password),
    err,
    h("button", { type: "submit" }, "Sign up"),
    h("p", {}, "Have an account? ", h("a", { href: "#/signin" }, "Sign in")),
  );
  mount(form);
  email.focus();
}

function recoveryPage(code: string): void {
  const out = h("output", { class: "code", id: "recovery-code" }, code);
  const copied = h("span", { class: "muted", "aria-live": "polite" });
  mount(
    h(
      "section",
      { class: "card narrow" },
      h("h1", {}, "Your recovery code"),
      h("p", {}, "This is the only time it is shown. It lets you set a new password if you forget yours. Keep it somewhere safe."),
      out,
      h(
        "div",
        { class: "row" },
        h(
          "button",
          {
            type: "button",
            onclick: () => {
              void navigator.clipboard.writeText(code).then(
                () => (copied.textContent = "Copied."),
                () => (copied.textContent = "Copy failed: select the code and copy it by hand."),
              );
            },
          },
          "Copy recovery code",
        ),
        copied,
      ),
      h("a", { class: "button", href: "#/", id: "continue" }, "I have saved it, continue"),
    ),
  );
}

function signInPage(): void {
  const email = h("input", { type: "email", name: "email", autocomplete: "email", required: true });
  const password = h("input", { type: "password", name: "password", autocomplete: "current-password", required: true });
  const err = errorLine();
  mount(
    h(
      "form",
      {
        class: "card narrow",
        onsubmit: onSubmit(err, async () => {
          const s = await api.signIn(email.value, password.value);
          setToken(s.token);
          me = null;
          const back = sessionStorage.getItem("cloister.after");
          sessionStorage.removeItem("cloister.after");
          location.hash = back ?? "#/";
        }),
      },
      h("h1", {}, "Sign in"),
      field("Email", email),
      field("Password", password),
      err,
      h("button", { type: "submit" }, "Sign in"),
      h("p", {}, "New here? ", h("a", { href: "#/signup" }, "Create an account")),
    ),
  );
  email.focus();
}

function courseCard(c: Course): HTMLElement {
  return h(
    "li",
    { class: "course" },
    h("a", { href: `#/course/${c.id}` }, c.title),
    h("p", { class: "muted" }, c.description),
    h("span", { class: "tag" }, c.price_minor === 0 ? "Free" : `${(c.price_minor / 100).toFixed(2)} ${c.currency}`),
    c.teachers.length > 0 ? h("span", { class: "muted" }, ` with ${c.teachers.join(", ")}`) : null,
  );
}

async function homePage(): Promise<void> {
  const mine = h("div", {}, h("p", { class: "muted" }, "Loading…"));
  const results = h("ul", { class: "courses", "aria-live": "polite" });
  const q = h("input", { type: "search", name: "q", placeholder: "Search the catalog" });
  const title = h("input", { type: "text", name: "title", required: true, maxlength: 200 });
  const description = h("textarea", { name: "description", rows: 2, maxlength: 2000 });
  const err = errorLine();
  const search = async () => {
    try {
      const page = await api.catalog(q.value);
      results.replaceChildren(...(page.courses.length === 0 ? [h("li", { class: "muted" }, "No course matches.")] : page.courses.map(courseCard)));
    } catch (e) {
      results.replaceChildren(h("li", { class: "error" }, message(e)));
    }
  };
  mount(
    h("h1", {}, "Courses"),
    h(
      "div",
      { class: "columns" },
      h(
        "section",
        { class: "card", "aria-labelledby": "mine-h" },
        h("h2", { id: "mine-h" }, "My courses"),
        mine,
        h(
          "form",
          {
            class: "stack",
            onsubmit: onSubmit(err, async () => {
              const c = await api.createCourse(title.value, description.value);
              location.hash = `#/course/${c.id}`;
            }),
          },
          h("h3", {}, "Teach a course"),
          field("Title", title),
          field("Description", description),
          err,
          h("button", { type: "submit" }, "Create course"),
        ),
      ),
      h(
        "section",
        { class: "card", "aria-labelledby": "cat-h" },
        h("h2", { id: "cat-h" }, "Catalog"),
        h(
          "form",
          {
            role: "search",
            class: "row",
            onsubmit: (ev: Event) => {
              ev.preventDefault();
              void search();
            },
          },
          h("label", { class: "sr-only", for: "q" }, "Search the catalog"),
          q,
          h("button", { type: "submit" }, "Search"),
        ),
        results,
      ),
    ),
  );
  q.id = "q";
  void search();
  try {
    const my = await api.myCourses();
    const list = (title: string, cs: Course[]) =>
      h("div", {}, h("h3", {}, title), cs.length === 0 ? h("p", { class: "muted" }, "None yet.") : h("ul", { class: "courses" }, ...cs.map(courseCard)));
    mine.replaceChildren(list("Teaching", my.teaching), list("Enrolled", my.enrolled));
  } catch (e) {
    mine.replaceChildren(h("p", { class: "error" }, message(e)));
  }
}

async function coursePage(id: string): Promise<void> {
  let course: Course;
  let teacher = false;
  try {
    const [c, mine] = await Promise.all([api.course(id), api.myCourses()]);
    course = c;
    teacher = mine.teaching.some((t) => t.id === id);
  } catch (e) {
    mount(h("h1", {}, "Course"), h("p", { class: "error", role: "alert" }, message(e)));
    return;
  }
  const sessions = h("ul", { class: "sessions" });
  const err = errorLine();
  const load = async () => {
    try {
      const list = await api.sessions(id);
      const now = Date.now();
      sessions.replaceChildren(
        ...(list.length === 0
          ? [h("li", { class: "muted" }, "No live session scheduled.")]
          : list.map((s) => {
              const start = new Date(s.starts_at);
              const end = new Date(s.ends_at);
              const live = start.getTime() <= now + 15 * 60_000 && now < end.getTime();
              return h(
                "li",
                {},
                h("time", { datetime: s.starts_at }, start.toLocaleString()),
                " – ",
                h("time", { datetime: s.ends_at }, end.toLocaleTimeString()),
                live ? h("a", { class: "button", href: `#/live/${s.id}` }, teacher ? "Start the live room" : "Join live") : h("span", { class: "muted" }, now >= end.getTime() ? " (ended)" : " (scheduled)"),
              );
            })),
      );
    } catch (e) {
      sessions.replaceChildren(h("li", { class: "error" }, message(e)));
    }
  };
  const minutes = h("input", { type: "number", name: "minutes", value: 60, min: 5, max: 600 });
  const capacity = h("input", { type: "number", name: "capacity", value: 30, min: 1, max: 10000 });
  const enrollLine = h("p", { "aria-live": "polite" });
  mount(
    h("h1", {}, course.title),
    h("p", {}, course.description),
    teacher
      ? h("p", { class: "tag" }, "You teach this course")
      : h(
          "div",
          { class: "row" },
          h(
            "button",
            {
              type: "button",
              id: "enroll",
              onclick: () => {
                void api.enroll(id).then(
                  (r) => (enrollLine.textContent = r.new ? "You are enrolled." : "You were already enrolled."),
                  (e: unknown) => (enrollLine.textContent = message(e)),
                );
              },
            },
            course.price_minor === 0 ? "Enroll (free)" : "Enroll",
          ),
          enrollLine,
        ),
    h("section", { class: "card", "aria-labelledby": "s-h" }, h("h2", { id: "s-h" }, "Live sessions"), sessions),
    teacher
      ? h(
          "form",
          {
            class: "card stack",
            onsubmit: onSubmit(err, async () => {
              const start = new Date(Date.now() - 60_000);
              const end = new Date(start.getTime() + (Number(minutes.value) + 1) * 60_000);
              await api.schedule(id, start, end, Number(capacity.value));
              await load();
            }),
          },
          h("h2", {}, "Start a session now"),
          field("Length in minutes", minutes),
          field("Seats for learners", capacity),
          err,
          h("button", { type: "submit" }, "Schedule"),
        )
      : null,
  );
  await load();
}

async function route(): Promise<void> {
  leaveRoom();
  const hash = location.hash.replace(/^#/, "") || "/";
  const parts = hash.split("/").filter((p) => p !== "");
  // A live room needs the e2ee core, the session and the seat: all are on their way while the account is looked up.
  let early: Early | undefined;
  if (parts[0] === "live" && parts[1] !== undefined) {
    void loadCore();
    if (token() !== null) {
      // The WebSocket ticket too (single use, 30 s): on a busy machine asking for it once the room is built cost
      // 40-130 ms of the join (BENCHMARKS.md, the first-frame benchmark).
      early = { session: api.liveSession(parts[1]), seat: api.admit(parts[1]), ticket: api.ticket() };
      // Read by the room; if the account lookup fails instead, their errors are not the page's to show.
      early.session.catch(() => {});
      early.seat.catch(() => {});
      early.ticket.catch(() => {});
    }
  }
  const who = await whoAmI();
  nav(who !== null);
  if (parts[0] === "signup") return signUpPage();
  if (parts[0] === "signin") return signInPage();
  if (who === null) {
    sessionStorage.setItem("cloister.after", location.hash || "#/");
    return signInPage();
  }
  if (parts[0] === "course" && parts[1] !== undefined) return coursePage(parts[1]);
  if (parts[0] === "live" && parts[1] !== undefined) return liveRoom(who, parts[1], early);
  return homePage();
}

window.addEventListener("hashchange", () => void route());
window.addEventListener("unhandledrejection", (e) => toast(message(e.reason)));
void route();
void short;
