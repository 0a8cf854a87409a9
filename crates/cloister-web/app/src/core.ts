// The e2ee core (crates/cloister-e2ee-wasm), loaded once per realm (the page and the media worker). The page
// compiles the module once and hands it to its media worker, so the 1.8 MB are not compiled twice while a student
// joins.
import init from "./wasm/cloister_e2ee_wasm.js";
import wasmUrl from "./wasm/cloister_e2ee_wasm_bg.wasm?url";

let compiled: Promise<WebAssembly.Module> | null = null;
let ready: Promise<unknown> | null = null;

/** The compiled module (fetched and compiled off the main thread; without a wasm MIME type, from the bytes). */
export function coreModule(): Promise<WebAssembly.Module> {
  compiled ??= WebAssembly.compileStreaming(fetch(wasmUrl))
    .catch(async () => WebAssembly.compile(await (await fetch(wasmUrl)).arrayBuffer()))
    .then((m) => {
      performance.mark("core_compiled");
      return m;
    });
  return compiled;
}

/** Instantiates the core in this realm, from `module` when given (the page's, posted to a worker). */
export function loadCore(module?: WebAssembly.Module): Promise<unknown> {
  if (ready === null) {
    // User Timing marks (not marks.ts, which a room resets): the join benchmark reads where compiling falls.
    performance.mark("core_start");
    ready = (module !== undefined ? Promise.resolve(module) : coreModule())
      .then((m) => init({ module_or_path: m }))
      .then((v) => {
        performance.mark("core_ready");
        return v;
      });
  }
  return ready;
}

export { Client, MediaKeys } from "./wasm/cloister_e2ee_wasm.js";
