// A few DOM helpers: elements are built with text nodes only (never innerHTML), so no message can inject markup.

type Child = Node | string | null | undefined | false;
type Attrs = Record<string, string | number | boolean | EventListener | undefined>;

export function h<K extends keyof HTMLElementTagNameMap>(tag: K, attrs: Attrs = {}, ...children: Child[]): HTMLElementTagNameMap[K] {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === undefined || v === false) continue;
    if (k.startsWith("on") && typeof v === "function") el.addEventListener(k.slice(2), v);
    else if (v === true) el.setAttribute(k, "");
    else el.setAttribute(k, String(v));
  }
  for (const c of children) {
    if (c === null || c === undefined || c === false) continue;
    el.append(typeof c === "string" ? document.createTextNode(c) : c);
  }
  return el;
}

export function clear(el: Element): void {
  while (el.firstChild !== null) el.firstChild.remove();
}

let firstMount = true;

/** Replaces the page's content. After a route change focus moves to it (screen readers announce the new page),
 * unless the page put it on one of its own controls; on the first page focus stays at the document's start, so the
 * skip link is the first Tab stop. The move waits for the next frame: focusing lays the page out, which the frame
 * does anyway, where now it would stop the script for a layout of its own (on the way to a live room's WebSocket,
 * BENCHMARKS.md). */
export function mount(...children: Child[]): HTMLElement {
  const main = document.getElementById("main") as HTMLElement;
  clear(main);
  for (const c of children) if (c !== null && c !== undefined && c !== false) main.append(c);
  const heading = main.querySelector("h1");
  if (heading !== null) document.title = `${heading.textContent ?? ""} · Cloister`;
  if (!firstMount) {
    requestAnimationFrame(() => {
      if (main.isConnected && !main.contains(document.activeElement)) main.focus({ preventScroll: true });
    });
  }
  firstMount = false;
  return main;
}

export function toast(text: string): void {
  const t = document.getElementById("toast");
  if (t === null) return;
  t.textContent = text;
  t.classList.add("show");
  setTimeout(() => t.classList.remove("show"), 4000);
}

/** An error line for a form, announced to screen readers. */
export function errorLine(): HTMLParagraphElement & { set(msg: string): void } {
  const p = h("p", { class: "error", role: "alert", "aria-live": "assertive" }) as HTMLParagraphElement & { set(msg: string): void };
  p.set = (msg: string) => {
    p.textContent = msg;
  };
  return p;
}

export function field(label: string, input: HTMLInputElement | HTMLTextAreaElement): HTMLLabelElement {
  return h("label", { class: "field" }, h("span", {}, label), input);
}

export function short(id: string): string {
  return id.length > 10 ? id.slice(0, 8) : id;
}
