// TensorBoard event files: TFRecord framing (length, masked CRC-32C, data, masked CRC-32C)
// around `Event` protobufs, as TensorFlow's summary writer makes them. No maintained writer
// exists for Bun or Rust (tensorboard-rs is marked inactive and pins protobuf 2), so the
// few messages a scalar and a text summary need are encoded here, field by field from
// tensorflow/core/util/event.proto and framework/summary.proto; tests/track.test.ts reads
// the files back with TensorBoard's own EventAccumulator.
import { appendFileSync, mkdirSync } from "node:fs";
import { hostname } from "node:os";
import { join } from "node:path";

// ---------------------------------------------------------------- protobuf, as much as needed

const enc = new TextEncoder();

function varint(n: number | bigint): number[] {
  let v = BigInt(n);
  const out: number[] = [];
  do {
    let b = Number(v & 0x7fn);
    v >>= 7n;
    if (v) b |= 0x80;
    out.push(b);
  } while (v);
  return out;
}

const key = (field: number, wire: number) => varint((field << 3) | wire);
const bytesField = (field: number, b: Uint8Array) => [...key(field, 2), ...varint(b.length), ...b];
const stringField = (field: number, s: string) => bytesField(field, enc.encode(s));
function doubleField(field: number, x: number): number[] {
  const b = new Uint8Array(8);
  new DataView(b.buffer).setFloat64(0, x, true);
  return [...key(field, 1), ...b];
}
function floatField(field: number, x: number): number[] {
  const b = new Uint8Array(4);
  new DataView(b.buffer).setFloat32(0, x, true);
  return [...key(field, 5), ...b];
}

/** Event { wall_time = 1; step = 2; file_version = 3 | summary = 5 } */
function event(step: number, what: number[]): Uint8Array {
  return Uint8Array.from([...doubleField(1, Date.now() / 1000), ...key(2, 0), ...varint(step), ...what]);
}

/** Summary { repeated Value value = 1 }, each Value { tag = 1; simple_value = 2 } */
function scalars(values: [string, number][]): number[] {
  const summary = values.flatMap(([tag, x]) =>
    bytesField(1, Uint8Array.from([...stringField(1, tag), ...floatField(2, x)])),
  );
  return bytesField(5, Uint8Array.from(summary));
}

/** A text summary: Value { tag = 1; metadata = 9 { plugin_data = 1 { plugin_name = 1: "text" } };
 *  tensor = 8 { dtype = 1: DT_STRING (7); tensor_shape = 2: {}; string_val = 8 } } */
function text(tag: string, body: string): number[] {
  const metadata = bytesField(1, Uint8Array.from(stringField(1, "text")));
  const tensor = [...key(1, 0), ...varint(7), ...bytesField(2, new Uint8Array()), ...stringField(8, body)];
  const value = [
    ...stringField(1, tag),
    ...bytesField(9, Uint8Array.from(metadata)),
    ...bytesField(8, Uint8Array.from(tensor)),
  ];
  return bytesField(5, Uint8Array.from(bytesField(1, Uint8Array.from(value))));
}

// ---------------------------------------------------------------- TFRecord

const CRC32C = (() => {
  const t = new Uint32Array(256);
  for (let i = 0; i < 256; i++) {
    let c = i;
    for (let k = 0; k < 8; k++) c = c & 1 ? 0x82f63b78 ^ (c >>> 1) : c >>> 1;
    t[i] = c >>> 0;
  }
  return t;
})();

function crc32c(b: Uint8Array): number {
  let c = 0xffffffff;
  for (const x of b) c = CRC32C[(c ^ x) & 0xff]! ^ (c >>> 8);
  return (c ^ 0xffffffff) >>> 0;
}

const masked = (b: Uint8Array) => {
  const c = crc32c(b);
  return (((c >>> 15) | (c << 17)) + 0xa282ead8) >>> 0;
};

function record(data: Uint8Array): Uint8Array {
  const out = new Uint8Array(8 + 4 + data.length + 4);
  const v = new DataView(out.buffer);
  v.setBigUint64(0, BigInt(data.length), true);
  v.setUint32(8, masked(out.subarray(0, 8)), true);
  out.set(data, 12);
  v.setUint32(12 + data.length, masked(data), true);
  return out;
}

/** One run's event file under `logdir`: scalars by step, and text (the run's config). */
export class EventWriter {
  readonly path: string;
  constructor(logdir: string) {
    mkdirSync(logdir, { recursive: true });
    this.path = join(
      logdir,
      `events.out.tfevents.${Math.floor(Date.now() / 1000)}.${hostname()}.${process.pid}.loralab`,
    );
    this.write(event(0, stringField(3, "brain.Event:2")));
  }

  /** A resumed run: TensorBoard's reader drops what this file's earlier session logged at this
   *  step and after (SessionLog START, Event field 6: { status = 1: START }), so the steps the
   *  resume trains again are not shown twice. */
  restart(step: number): void {
    this.write(event(step, bytesField(6, Uint8Array.from([...key(1, 0), ...varint(1)]))));
  }

  scalars(step: number, values: [string, number][]): void {
    // a NaN loss is written as one: divergence is what a chart should show
    if (values.length) this.write(event(step, scalars(values)));
  }

  text(step: number, tag: string, body: string): void {
    this.write(event(step, text(tag, body)));
  }

  private write(e: Uint8Array): void {
    appendFileSync(this.path, record(e));
  }
}
