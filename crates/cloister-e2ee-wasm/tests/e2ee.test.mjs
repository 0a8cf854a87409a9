// Loads the built wasm module (cargo xtask wasm) in Node and runs a group of two through it.
import test from 'node:test';
import assert from 'node:assert/strict';
import { createRequire } from 'node:module';

const require = createRequire(import.meta.url);
const pkg = process.env.CLOISTER_WASM_NODE_PKG;
assert.ok(pkg, 'CLOISTER_WASM_NODE_PKG names the wasm-bindgen --target nodejs output (cargo xtask wasm sets it)');
const wasm = require(`${pkg}/cloister_e2ee_wasm.js`);

const now = () => Date.now();
const gid = new TextEncoder().encode('session-wasm');

function classOfTwo() {
  const ds = new wasm.DeliveryServiceKey();
  const teacher = new wasm.Client('teacher', 'laptop');
  const student = new wasm.Client('student', 'phone');
  teacher.create_group(gid, ds.external_sender(), now());
  const add = ds.propose_add(gid, teacher.epoch(), student.key_package());
  assert.equal(JSON.parse(teacher.process(add, now())).kind, 'proposal_queued');
  const commit = teacher.commit_pending();
  const welcome = teacher.take_welcome();
  assert.ok(welcome, 'a Welcome for the new member');
  // The delivery service fans the commit back to its author, which then moves to the new epoch.
  assert.equal(JSON.parse(teacher.process(commit, now())).kind, 'new_epoch');
  student.join(welcome, now());
  return { ds, teacher, student };
}

test('a group of two derives the same base key and safety code', () => {
  const { teacher, student } = classOfTwo();
  assert.equal(teacher.epoch(), 1n);
  assert.equal(student.epoch(), 1n);
  assert.equal(teacher.base_key_digest(), student.base_key_digest());
  const ti = JSON.parse(teacher.epoch_info());
  const si = JSON.parse(student.epoch_info());
  assert.equal(ti.safety_code, si.safety_code);
  assert.match(ti.safety_code, /^\d{5}( \d{5}){5}$/);
  assert.deepEqual(ti.roster.map((r) => r.user_id), ['teacher', 'student']);
});

test('a frame sealed on one side opens on the other; a changed prefix fails', () => {
  const { teacher, student } = classOfTwo();
  const frame = new Uint8Array(1200).map((_, i) => (i * 7) & 0xff);
  frame[0] = 0x10; // VP8 key frame: 10 clear bytes
  const wire = teacher.seal(0, 'vp8', frame);
  assert.deepEqual(wire.slice(0, 10), frame.slice(0, 10), 'the codec prefix stays clear');
  // A changed clear prefix fails authentication (and, not being authentic, does not use up the counter).
  const tampered = wire.slice();
  tampered[3] ^= 1;
  assert.throws(() => student.open('vp8', tampered, now()), /authentication/);
  assert.deepEqual(student.open('vp8', wire, now()), frame);
  assert.throws(() => student.open('vp8', wire, now()), /replay/, 'the same frame twice is a replay');
});

test('a media worker keyring drops a duplicate frame without an error and refuses a forged one', () => {
  const { teacher, student } = classOfTwo();
  const sender = new wasm.MediaKeys(0);
  sender.install(teacher.epoch(), 0, teacher.media_epoch_key(), now());
  const receiver = new wasm.MediaKeys(1);
  receiver.install(student.epoch(), 1, student.media_epoch_key(), now());
  const frame = new Uint8Array(300).map((_, i) => (i * 13) & 0xff);
  frame[0] = 0x11; // VP8 delta frame: 1 clear byte
  const wire = sender.seal(0, 'vp8', frame);
  const forged = wire.slice();
  forged[forged.length - 1] ^= 1;
  assert.throws(() => receiver.open('vp8', forged, now()), /authentication/);
  assert.deepEqual(receiver.open('vp8', wire, now()), frame);
  // A browser can hand the transform one frame twice (a packet of it resent while it is in the transform).
  assert.equal(receiver.open('vp8', wire, now()), undefined, 'the second copy is dropped, not an error');
  const next = sender.seal(0, 'vp8', frame);
  assert.deepEqual(receiver.open('vp8', next, now()), frame, 'the next frame still opens');
});

test('a frame whose epoch has no key yet fails with the NoKeyError the media worker holds frames on, and opens later', () => {
  const { teacher, student } = classOfTwo();
  const sender = new wasm.MediaKeys(0);
  sender.install(teacher.epoch(), 0, teacher.media_epoch_key(), now());
  const frame = new Uint8Array(200).map((_, i) => (i * 5) & 0xff);
  frame[0] = 0x11;
  const wire = sender.seal(0, 'vp8', frame);
  const receiver = new wasm.MediaKeys(1);
  // e2ee-worker.ts tells "wait for the key" from a failure by this name.
  assert.equal(wasm.MediaKeys.no_key_error(), 'NoKeyError');
  assert.throws(() => receiver.open('vp8', wire, now()), (e) => e instanceof Error && e.name === 'NoKeyError' && e.message === 'no key for that epoch');
  // Any other failure is a plain Error: a frame changed in flight fails authentication once its key is in.
  receiver.install(student.epoch(), 1, student.media_epoch_key(), now());
  const changed = wire.slice();
  changed[changed.length - 1] ^= 1;
  assert.throws(() => receiver.open('vp8', changed, now()), (e) => e instanceof Error && e.name === 'Error' && e.message === 'frame failed authentication');
  assert.deepEqual(receiver.open('vp8', wire, now()), frame, 'the held frame opens once its key is in');
});

test('a chat message decrypts on the other side', () => {
  const { teacher, student } = classOfTwo();
  const bytes = student.send(JSON.stringify({ type: 'chat', text: 'hello from wasm' }));
  const ev = JSON.parse(teacher.process(bytes, now()));
  assert.equal(ev.kind, 'message');
  assert.equal(ev.sender_user, 'student');
  assert.deepEqual(ev.message, { type: 'chat', text: 'hello from wasm' });
});

test('state survives save and restore (a reloaded tab)', () => {
  const { teacher, student } = classOfTwo();
  const restored = wasm.Client.restore(student.save());
  assert.equal(restored.base_key_digest(), teacher.base_key_digest());
  const wire = teacher.seal(0, 'opaque', new Uint8Array([1, 2, 3]));
  assert.deepEqual(restored.open('opaque', wire, now()), new Uint8Array([1, 2, 3]));
});
