// Vite builds app/ into dist/, which `cloister serve` serves. The e2ee core's wasm-bindgen output is copied into
// app/src/wasm/ by `cargo xtask web` before the build (it is not committed).
import { defineConfig } from "vite";

export default defineConfig({
  root: "app",
  base: "/",
  build: {
    outDir: "../dist",
    emptyOutDir: true,
    target: "es2022",
    sourcemap: false,
    // No inline scripts or data: URLs: the server's CSP allows same-origin files only.
    assetsInlineLimit: 0,
    modulePreload: { polyfill: false },
  },
  worker: { format: "es" },
});
