/** Test helpers for checkpoint folders. */
import * as fs from 'fs';
import * as path from 'path';

/** Copies a checkpoint folder (weights, config, tokenizer; not the golden outputs) to scratch/name, for a test that changes or damages it. */
export function copyCheckpoint(src: string, scratch: string, name: string): string {
  const dst = path.join(scratch, name);
  fs.mkdirSync(dst);
  for (const f of fs.readdirSync(src)) {
    if (f.startsWith('golden')) continue;
    fs.copyFileSync(path.join(src, f), path.join(dst, f));
  }
  return dst;
}
