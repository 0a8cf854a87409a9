// The e2ee core (crates/cloister-e2ee-wasm), loaded once per realm (the page and the media worker).
import init from "./wasm/cloister_e2ee_wasm.js";
import wasmUrl from "./wasm/cloister_e2ee_wasm_bg.wasm?url";

let ready: Promise<unknown> | null = null;

export function loadCore(): Promise<unknown> {
  ready ??= init({ module_or_path: wasmUrl });
  return ready;
}

export { Client, MediaKeys } from "./wasm/cloister_e2ee_wasm.js";
