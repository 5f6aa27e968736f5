/**
 * PLM_DECODE_SHARE: the share of the engine's time that generating sequences get while other prompts wait
 * (0 = prompts first). It changes when tokens come, never which: each case runs the same four staggered requests
 * about different images in a child process with the variable set and compares the token ids with a run at the
 * default (0.5). A value outside [0, 1] is reported on stderr and the default is used.
 */
import { spawnSync } from 'child_process';
import * as path from 'path';

const ROOT = path.join(__dirname, '..');

// Four requests, each started 30 ms after the one before, so later prompts arrive while earlier ones decode.
const SCRIPT = `
const path = require('path');
const { loadModel } = require(${JSON.stringify(path.join(ROOT, 'dist', 'lib', 'index.js'))});
(async () => {
  const model = await loadModel(${JSON.stringify(path.join(ROOT, 'models', 'plm-tiny'))}, { backend: 'cpu', threads: 1, sequences: 4 });
  const images = ['scene1.png', 'scene2.png', 'scene3.png', 'shapes.png'].map((f) => path.join(${JSON.stringify(path.join(ROOT, 'samples'))}, f));
  const out = await Promise.all(images.map(async (img, i) => {
    await new Promise((r) => setTimeout(r, 30 * i));
    const r = await model.complete({ prompt: 'Describe the image.', images: [img], maxTokens: 24, temperature: 0 });
    return r.tokenIds;
  }));
  model.dispose();
  process.stdout.write(JSON.stringify(out));
})().catch((e) => { console.error(e); process.exit(1); });
`;

function run(share: string | undefined): { ids: number[][]; stderr: string } {
  const env = { ...process.env };
  delete env.PLM_DECODE_SHARE;
  if (share !== undefined) env.PLM_DECODE_SHARE = share;
  const r = spawnSync(process.execPath, ['-e', SCRIPT], { env, encoding: 'utf8', timeout: 120_000 });
  if (r.status !== 0) throw new Error(`child failed (${r.status}): ${r.stderr}`);
  return { ids: JSON.parse(r.stdout) as number[][], stderr: r.stderr };
}

describe('PLM_DECODE_SHARE', () => {
  let reference: number[][];
  beforeAll(() => {
    reference = run(undefined).ids;
  }, 150_000);

  test('the default run generates every request', () => {
    expect(reference).toHaveLength(4);
    for (const ids of reference) expect(ids.length).toBeGreaterThan(0);
  });

  test.each(['0', '0.2', '1'])('share %s gives the same tokens as the default', (share) => {
    const { ids, stderr } = run(share);
    expect(ids).toEqual(reference);
    expect(stderr).not.toMatch(/PLM_DECODE_SHARE/);
  }, 150_000);

  test('a value outside [0, 1] is reported and the default used', () => {
    const { ids, stderr } = run('1.5');
    expect(stderr).toMatch(/PLM_DECODE_SHARE=1\.5 is not a number from 0 to 1/);
    expect(ids).toEqual(reference);
  }, 150_000);
});
