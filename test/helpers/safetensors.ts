/** Reads the f32/i32/u8 tensors of a golden.safetensors fixture (tests only). */
import * as fs from 'fs';

export interface FixtureTensor {
  dtype: string;
  shape: number[];
  data: Float32Array | Int32Array | Uint8Array | BigInt64Array;
}

export function readSafetensors(path: string): Record<string, FixtureTensor> {
  const buf = fs.readFileSync(path);
  const headerLen = Number(buf.readBigUInt64LE(0));
  const header = JSON.parse(buf.subarray(8, 8 + headerLen).toString('utf8')) as Record<
    string,
    { dtype: string; shape: number[]; data_offsets: [number, number] }
  >;
  const base = 8 + headerLen;
  const out: Record<string, FixtureTensor> = {};
  for (const [name, t] of Object.entries(header)) {
    if (name === '__metadata__') continue;
    const [b, e] = t.data_offsets;
    const bytes = new Uint8Array(buf.subarray(base + b, base + e)); // copy: aligned for typed views
    let data: FixtureTensor['data'];
    switch (t.dtype) {
      case 'F32':
        data = new Float32Array(bytes.buffer, bytes.byteOffset, bytes.byteLength / 4);
        break;
      case 'I32':
        data = new Int32Array(bytes.buffer, bytes.byteOffset, bytes.byteLength / 4);
        break;
      case 'I64':
        data = new BigInt64Array(bytes.buffer, bytes.byteOffset, bytes.byteLength / 8);
        break;
      case 'U8':
        data = bytes;
        break;
      default:
        throw new Error(`${path}: fixture tensor ${name} has unsupported dtype ${t.dtype}`);
    }
    out[name] = { dtype: t.dtype, shape: t.shape, data };
  }
  return out;
}

/** Largest absolute difference between two equally long arrays. */
export function maxAbsDiff(a: ArrayLike<number>, b: ArrayLike<number>): number {
  if (a.length !== b.length) throw new Error(`length mismatch: ${a.length} vs ${b.length}`);
  let m = 0;
  for (let i = 0; i < a.length; i++) {
    const d = Math.abs(a[i] - b[i]);
    if (!(d <= m)) m = Number.isNaN(d) ? Infinity : d;
  }
  return m;
}

export function toIntArray(t: FixtureTensor): number[] {
  return Array.from(t.data as ArrayLike<number | bigint>, (v) => Number(v));
}
