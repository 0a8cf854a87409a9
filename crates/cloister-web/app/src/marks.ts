// Milliseconds since navigation start at each step of joining a live room, first time each happens (the
// first-frame benchmark reads them through the page's debug hook).
export const marks: Record<string, number> = {};

export function mark(name: string, at: number = performance.now()): void {
  marks[name] ??= Math.round(at);
}

export function resetMarks(): void {
  for (const k of Object.keys(marks)) delete marks[k];
}
